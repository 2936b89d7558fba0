"""The fine-tuning job end to end (`tfllm.training.run`): LoRA + int8 evaluation of a MiniLM
teacher, then a small student distilled from it, both loadable for export."""

import json
import os

import numpy as np
import pytest

from tests.finetune.test_recipes import load_recipe
from tfllm import artifacts, export, finetune, training


def short_config(config, tfds_dir, steps):
  config.data.update(data_dir=tfds_dir, sequence_length=32, bucket_lengths=(16,),
                     train_split="train[:128]",
                     eval_split="validation[:64]")
  config.train.update(steps=steps, steps_per_loop=steps, eval_steps=4, global_batch_size=16,
                      checkpoint_every_steps=0, jit_compile="off")
  config.train.optimizer.update(warmup_steps=1)
  return config


@pytest.fixture(scope="module")
def teacher_dir(tfds_dir, tmp_path_factory):
  """A MiniLM sentiment model fine-tuned with LoRA for a few steps, evaluated in int8 too."""
  model_dir = str(tmp_path_factory.mktemp("teacher"))
  config = short_config(load_recipe("minilm_movie_sentiment"), tfds_dir, steps=4)
  config.finetune.update(strategy="lora", lora_rank=4, quantize="int8")
  summary = training.run(config, model_dir, strategy_name="one_device", log=lambda line: None)
  return model_dir, summary


@pytest.mark.slow
def test_int8_evaluation_is_written_and_close_to_float(teacher_dir, finetune_section):
  model_dir, summary = teacher_dir
  float_metrics, int8_metrics = summary["eval_metrics"], summary["eval_metrics_int8"]
  with open(os.path.join(model_dir, "eval_metrics_int8.json")) as f:
    assert json.load(f)["accuracy"] == pytest.approx(int8_metrics["accuracy"])
  assert os.path.isfile(os.path.join(model_dir, "model.int8.weights.h5"))
  # Per-channel int8 kernels move the loss by far less than training does.
  assert int8_metrics["loss"] == pytest.approx(float_metrics["loss"], rel=0.05)
  model, _, _ = export.load_trained(model_dir)        # what tfllm-export serves
  assert finetune.quantization_mode(model) == "int8"
  assert not finetune.strategies.lora_enabled(model)


@pytest.mark.slow
def test_distilled_student_trains_and_loads_alone(teacher_dir, tfds_dir, tmp_path,
                                                  finetune_section):
  teacher, _ = teacher_dir
  config = short_config(load_recipe("distill_bert_tiny"), tfds_dir, steps=4)
  config.finetune.distill.teacher_model_dir = teacher
  summary = training.run(config, str(tmp_path), strategy_name="one_device",
                         log=lambda line: None)
  # What distillation does to the student is tested in test_distillation.py; here: the run
  # trained the student for its steps and saved it (and only it) with its evaluation.
  assert summary["step"] == 4 and summary["stop_reason"] == "steps"
  with open(os.path.join(str(tmp_path), "eval_metrics.json")) as f:
    assert json.load(f)["accuracy"] == pytest.approx(summary["eval_metrics"]["accuracy"])
  student, student_config = artifacts.load_trained_model(str(tmp_path))
  assert student_config.model.num_layers == 2
  assert len(student.backbone.blocks) == 2           # the student alone was saved
  x = {"token_ids": np.full((1, 8), 1000, "int32"), "padding_mask": np.ones((1, 8), bool)}
  assert student(x).shape == (1, 2)


@pytest.mark.slow
def test_a_teacher_of_other_labels_is_refused(teacher_dir, tfds_dir, tmp_path,
                                              finetune_section):
  teacher, _ = teacher_dir
  config = short_config(load_recipe("distill_bert_tiny"), tfds_dir, steps=2)
  config.task.labels = ["bad", "good"]
  config.finetune.distill.teacher_model_dir = teacher
  with pytest.raises(ValueError, match=r"has task.labels=\['negative', 'positive'\]"):
    training.run(config, str(tmp_path), strategy_name="one_device", log=lambda line: None)
