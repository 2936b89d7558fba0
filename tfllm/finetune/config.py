"""Schema of the `finetune` config section (see `tfllm.config`).

  init_checkpoint   a Hugging Face BERT directory (config.json, model.safetensors, vocab.txt)
                    whose weights initialize the backbone; "" = random initialization
  strategy          full | top_layers | lora | adapters: which variables train
                    (`tfllm.finetune.strategies`)
  train_top_layers  top_layers: blocks that train; the embeddings and lower blocks are frozen
  lora_rank         lora: adapter rank (>= 1)
  lora_alpha        lora: scale numerator; 0 = lora_rank (scale 1)
  adapter_placement adapters: houlsby (after attention and after the feed-forward) | pfeiffer
                    (after the feed-forward only)
  adapter_size      adapters: bottleneck width; 0 = hidden_dim // adapter_reduction_factor
  adapter_reduction_factor  adapters: hidden_dim / bottleneck width, when adapter_size is 0
  adapter_activation  adapters: relu | gelu | swish inside each adapter
  quantize          "" | int8: evaluate/export the int8-quantized model after training
  distill           teacher_model_dir: a tfllm model_dir (config.json + checkpoints) of the
                    fine-tuned teacher ("" = no distillation); temperature; alpha, the weight
                    of the soft-target KL term (1 - alpha weighs the hard-label cross-entropy)
  adversarial       method "" | fgm | pgd | freelb (adversarial training on the word
                    embeddings, `tfllm.finetune.adversarial`); epsilon, steps, step_size,
                    loss_weight
  pruning           magnitude pruning (`tfllm.finetune.pruning`): target_sparsity (0 = off),
                    initial_sparsity, begin_step, end_step (0 = train.steps), frequency
                    (steps between mask updates), scope (per_layer | global), structure
                    ("unstructured" | "N:M", e.g. "2:4"), include / exclude (regular
                    expressions on variable paths; default: the backbone's dense kernels)
  head_data         multi_task: per head, the dataset (and features, splits) it trains on;
                    batches alternate between heads at random, in proportion to `weight`
"""

from __future__ import annotations

import re
from typing import Optional, Tuple

from tfllm.config import ConfigError, SectionSchema
from tfllm.finetune.strategies import STRATEGIES
from tfllm.layers.adapter import ADAPTER_ACTIVATIONS, ADAPTER_PLACEMENTS


ADVERSARIAL_METHODS = ("", "fgm", "pgd", "freelb")
# Tasks whose models take `word_embeddings_delta` (the single-task fine-tuning models).
ADVERSARIAL_TASKS = ("sequence_classification", "token_classification")


def adversarial_defaults():
  """`config.finetune.adversarial`: off by default (`method=""`)."""
  return dict(
      method="",         # "" | fgm | pgd | freelb
      # Radius of the perturbation (L2 norm per sequence). 0.03 was best on validation for
      # MiniLM; 0.3 cost 5 points and 1.0 collapsed training (docs/finetuning.md).
      epsilon=0.03,
      steps=3,           # pgd, freelb: ascent steps
      step_size=0.01,    # pgd, freelb: L2 length of each ascent step (per sequence)
      loss_weight=1.0,   # fgm, pgd: weight of the adversarial loss beside the clean one
  )


PRUNING_STRUCTURES_HELP = "'unstructured' or 'N:M' with 0 < N < M (e.g. '2:4')"


def n_m(structure: str) -> Optional[Tuple[int, int]]:
  """`(N, M)` of an "N:M" structure, None for "unstructured".

  Raises:
    ConfigError: `structure` is neither.
  """
  if structure == "unstructured":
    return None
  match = re.fullmatch(r"(\d+):(\d+)", structure)
  if not match or not 0 < int(match.group(1)) < int(match.group(2)):
    raise ConfigError(f"config.finetune.pruning.structure={structure!r} is not accepted; use "
                      f"{PRUNING_STRUCTURES_HELP}")
  return int(match.group(1)), int(match.group(2))


def pruning_enabled(pruning) -> bool:
  """Whether a `finetune.pruning` section prunes anything."""
  return pruning.target_sparsity > 0 or pruning.structure != "unstructured"


def check_pruning(pruning) -> None:
  """The rules of `finetune.pruning` that involve several keys (one-line `ConfigError`s)."""
  structure = n_m(pruning.structure)
  key = "config.finetune.pruning"
  if structure is not None:
    for name in ("target_sparsity", "initial_sparsity"):
      if pruning[name]:
        raise ConfigError(f"{key}.{name}={pruning[name]} must be 0 with structure="
                          f"{pruning.structure!r} (its sparsity is 1 - N/M)")
    if pruning.scope != "per_layer":
      raise ConfigError(f"{key}.scope={pruning.scope!r} must be 'per_layer' with structure="
                        f"{pruning.structure!r} (N:M groups are local)")
  elif pruning.initial_sparsity > pruning.target_sparsity:
    raise ConfigError(f"{key}.initial_sparsity={pruning.initial_sparsity} is above "
                      f"target_sparsity={pruning.target_sparsity}; accepted: "
                      f"[0, target_sparsity]")
  if pruning.end_step and pruning.end_step < pruning.begin_step:
    raise ConfigError(f"{key}.end_step={pruning.end_step} is before begin_step="
                      f"{pruning.begin_step}; accepted: 0 (= train.steps) or >= begin_step")
  for name in ("include", "exclude"):
    for pattern in pruning[name]:
      try:
        re.compile(pattern)
      except (re.error, TypeError) as error:
        raise ConfigError(f"{key}.{name} pattern {pattern!r} is not a regular expression "
                          f"({error})") from error


def _finetune_defaults():
  return dict(
      init_checkpoint="",
      strategy="full",
      train_top_layers=2,
      lora_rank=8,
      lora_alpha=0.0,
      adapter_placement="houlsby",
      adapter_size=0,
      adapter_reduction_factor=16,
      adapter_activation="relu",
      quantize="",
      distill=dict(
          teacher_model_dir="",
          temperature=2.0,
          alpha=0.5,
      ),
      adversarial=adversarial_defaults(),
      pruning=dict(
          target_sparsity=0.0,
          initial_sparsity=0.0,
          begin_step=0,
          end_step=0,
          frequency=100,
          scope="per_layer",
          structure="unstructured",
          include=("backbone/.*/kernel$",),
          exclude=(),
      ),
      head_data={},              # multi_task: head name -> its data source (_head_data_defaults)
  )


def _head_data_defaults():
  """Where one multi-task head's examples come from; `config.data` gives the rest (sequence
  length, shuffling, data_dir)."""
  return dict(
      dataset="",
      text_feature="text",
      label_feature="label",
      train_split="train",
      eval_split="validation",
      test_split="test",
      weight=1.0,                # share of training batches drawn from this head's data
  )


def _check_finetune(section):
  if section.strategy == "lora" and section.lora_rank < 1:
    raise ConfigError(f"config.finetune.lora_rank={section.lora_rank} must be >= 1 for "
                      "config.finetune.strategy='lora'")
  check_pruning(section.pruning)
  if pruning_enabled(section.pruning) and section.strategy == "lora":
    raise ConfigError("config.finetune.strategy='lora' cannot be pruned (the merged adapters "
                      "would fill the zeros); use strategy full or top_layers, or "
                      "config.finetune.pruning.target_sparsity=0")


SCHEMAS = {
    "finetune": SectionSchema(
        _finetune_defaults,
        choices={"strategy": STRATEGIES, "quantize": ("", "int8"),
                 "adapter_placement": ADAPTER_PLACEMENTS,
                 "adapter_activation": ADAPTER_ACTIVATIONS,
                 "adversarial.method": ADVERSARIAL_METHODS,
                 "pruning.scope": ("per_layer", "global")},
        ranges={"train_top_layers": (0, None), "lora_rank": (0, None),
                "adapter_size": (0, None), "adapter_reduction_factor": (1, None),
                "lora_alpha": (0.0, None), "distill.temperature": (1e-6, None),
                "distill.alpha": (0.0, 1.0), "adversarial.epsilon": (0.0, None),
                "adversarial.steps": (1, None), "adversarial.step_size": (0.0, None),
                "adversarial.loss_weight": (0.0, None),
                "pruning.target_sparsity": (0.0, 0.999),
                "pruning.initial_sparsity": (0.0, 0.999), "pruning.begin_step": (0, None),
                "pruning.end_step": (0, None), "pruning.frequency": (1, None)},
        check=_check_finetune,
        entry_schemas={"head_data": SectionSchema(
            _head_data_defaults, ranges={"weight": (0.0, None)})}),
}


def with_finetune_section(config):
  """`config` with a default `finetune` section when it has none (returned, changed in place)."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  if "finetune" not in config:
    config.finetune = ml_collections.ConfigDict(_finetune_defaults())
  return config
