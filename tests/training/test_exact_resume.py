"""A job without `data.deterministic` resumes exactly: train 2k steps, or k, restart, k more.

The real masked-LM pipeline (shuffled text files, parallel maps, dynamic masks) feeds the
trainer; the relaunched trainer skips the batches the first k steps consumed, so identical
weights at the end mean it read the same batches, masks included.
"""

from __future__ import annotations

import numpy as np
import pydoc_data.topics

from tests.data.conftest import write_text_files
from tests.training.helpers import make_trainer, trainer_config
from tfllm.data import pipelines, tokenizers

BYTE = tokenizers.ByteLevelTokenizer()
STEPS, INTERRUPTED_AT = 12, 7


def _config(text_glob, steps):
  config = trainer_config("masked_lm", steps=steps, steps_per_loop=3, checkpoint_every_steps=6,
                       eval_steps=0)
  config.model.vocab_size = BYTE.vocabulary_size()
  config.data.update(dataset="text_files", files=text_glob, shuffle_buffer=32,
                     max_predictions=4)
  config.train.optimizer.decay_steps = STEPS   # the interrupted run keeps the full schedule
  assert not config.data.deterministic
  return config


def _trainer(config, model_dir):
  dataset_fn = lambda training: lambda context: pipelines.make_dataset(  # noqa: E731
      config, "train", BYTE, context, training=training)
  return make_trainer(config, model_dir, train_fn=dataset_fn(True), eval_fn=dataset_fn(False))


def test_a_masked_lm_job_without_data_deterministic_resumes_exactly(tmp_path):
  topics = pydoc_data.topics.topics
  text_glob = write_text_files(tmp_path / "corpus", [topics[n] for n in sorted(topics)[:2]])
  straight = _trainer(_config(text_glob, STEPS), tmp_path / "straight")
  straight.train()

  _trainer(_config(text_glob, INTERRUPTED_AT), tmp_path / "resumed").train()
  # The relaunch: a new model, optimizer and pipeline, as a new process builds them.
  relaunched = _trainer(_config(text_glob, STEPS), tmp_path / "resumed")
  assert relaunched.restore().endswith(f"ckpt-{INTERRUPTED_AT}")
  relaunched.train()
  assert int(relaunched.step.numpy()) == STEPS
  for a, b in zip(straight.model.weights, relaunched.model.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
