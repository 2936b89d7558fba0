"""Schema of the `model` and `task` config sections (see `tfllm.config`), and style presets.

A backbone's style is a set of choices, not a class: `model_preset("gpt2" | "bert" | "llama")`
returns the `model` section that a config file starts from and then resizes.
"""

from __future__ import annotations

from tfllm.config import ConfigError, SectionSchema
from tfllm.tagging.iob2 import DECODINGS, iob2_scheme, tag_decoding

POSITION_EMBEDDINGS = ("learned", "sinusoidal", "rotary", "none")
NORMALIZATIONS = ("layer_norm", "rms_norm")
ACTIVATIONS = ("gelu", "gelu_approximate", "relu", "swiglu")
TASKS = ("causal_lm", "masked_lm", "sequence_classification", "token_classification",
         "multi_task")
HEAD_TASKS = ("masked_lm", "sequence_classification", "token_classification")
POOLINGS = ("first", "mean")


def _model_defaults():
  return dict(
      vocab_size=8000,
      num_layers=4,
      hidden_dim=256,
      num_heads=4,
      num_kv_heads=0,              # 0 = num_heads; 1 = multi-query attention
      head_dim=0,                  # 0 = hidden_dim // num_heads
      intermediate_dim=1024,
      max_sequence_length=512,
      position_embedding="learned",
      rope_max_wavelength=10000.0,
      num_token_types=0,           # > 0 adds BERT's segment embeddings
      normalization="layer_norm",
      norm_epsilon=1e-5,
      norm_first=True,             # pre-norm (GPT-2, Llama) or post-norm (BERT)
      activation="gelu_approximate",
      causal=True,
      use_bias=True,
      dropout=0.0,
      attention_dropout=0.0,
      tie_embeddings=True,
      initializer_range=0.02,
      attention_block_size=0,      # > 0: block-wise (online-softmax) attention over key blocks
  )


def model_preset(style: str) -> dict:
  """The `model` section of a GPT-2, BERT or Llama style backbone (sizes are the defaults)."""
  presets = {
      "gpt2": dict(position_embedding="learned", normalization="layer_norm", norm_epsilon=1e-5,
                   norm_first=True, activation="gelu_approximate", causal=True, use_bias=True),
      "bert": dict(position_embedding="learned", num_token_types=2, normalization="layer_norm",
                   norm_epsilon=1e-12, norm_first=False, activation="gelu", causal=False,
                   use_bias=True),
      "llama": dict(position_embedding="rotary", normalization="rms_norm", norm_epsilon=1e-6,
                    norm_first=True, activation="swiglu", causal=True, use_bias=False,
                    tie_embeddings=False),
  }
  if style not in presets:
    raise ConfigError(f"model style {style!r} is not known; use one of: {', '.join(presets)}")
  section = _model_defaults()
  section.update(presets[style])
  return section


def _check_model(section):
  num_kv_heads = section.num_kv_heads or section.num_heads
  if section.num_heads % num_kv_heads:
    raise ConfigError(f"config.model.num_kv_heads={section.num_kv_heads} must divide "
                      f"config.model.num_heads={section.num_heads}")
  if not section.head_dim and section.hidden_dim % section.num_heads:
    raise ConfigError(f"config.model.hidden_dim={section.hidden_dim} is not divisible by "
                      f"config.model.num_heads={section.num_heads}; set config.model.head_dim")
  head_dim = section.head_dim or section.hidden_dim // section.num_heads
  if section.position_embedding == "rotary" and head_dim % 2:
    raise ConfigError(f"rotary position embedding needs an even head_dim, got {head_dim}")


def _head_defaults():
  return dict(
      task="sequence_classification",
      labels=[],
      num_classes=0,
      pooling="first",
      dropout=0.1,
      loss_weight=1.0,
      decoding="argmax",
  )


def _check_head_labels(section, task, path):
  if task in ("sequence_classification", "token_classification"):
    if not section.labels and section.num_classes < 1:
      raise ConfigError(f"config.{path}: a {task} head needs `labels` or `num_classes`")
    if section.labels and section.num_classes and section.num_classes != len(section.labels):
      raise ConfigError(f"config.{path}.num_classes={section.num_classes} does not match the "
                        f"{len(section.labels)} labels given")
  _check_decoding(section, task, path)


def _check_decoding(section, task, path):
  decoding = tag_decoding(section)
  if decoding == "argmax":
    return
  if task != "token_classification":
    raise ConfigError(f"config.{path}.decoding={decoding!r} decodes tags; a {task} head takes "
                      "only 'argmax'")
  if not section.labels:
    raise ConfigError(f"config.{path}.decoding={decoding!r} needs IOB2 tag names in "
                      f"config.{path}.labels (e.g. ['O', 'B-PER', 'I-PER'])")
  try:
    iob2_scheme(section.labels)
  except ValueError as e:
    raise ConfigError(f"config.{path}.decoding={decoding!r} needs IOB2 tags: {e}") from None


def _task_defaults():
  return dict(
      name="causal_lm",
      labels=[],                   # class or tag names; their count is the number of classes
      num_classes=0,
      pooling="first",             # sequence classification: first token or mean over padding
      dropout=0.1,
      # token classification: "argmax" per word, "iob2_viterbi" (the best valid IOB2 sequence)
      # or "crf" (a learned transition layer, trained and decoded; docs/finetuning.md)
      decoding="argmax",
      heads={},                    # multi_task: head name -> head section (see _head_defaults)
  )


def _check_task(section):
  if section.name in ("sequence_classification", "token_classification"):
    _check_head_labels(section, section.name, "task")
  else:
    _check_decoding(section, section.name, "task")
  if section.name == "multi_task":
    if not section.heads:
      raise ConfigError("config.task.heads is empty; a multi_task model needs at least one head")
    for name, head in section.heads.items():
      _check_head_labels(head, head.task, f"task.heads.{name}")


SCHEMAS = {
    "model": SectionSchema(
        _model_defaults,
        choices={"position_embedding": POSITION_EMBEDDINGS, "normalization": NORMALIZATIONS,
                 "activation": ACTIVATIONS},
        ranges={"vocab_size": (1, None), "num_layers": (1, None), "hidden_dim": (1, None),
                "num_heads": (1, None), "num_kv_heads": (0, None), "head_dim": (0, None),
                "intermediate_dim": (1, None), "max_sequence_length": (1, None),
                "num_token_types": (0, None), "norm_epsilon": (0.0, None),
                "dropout": (0.0, 1.0), "attention_dropout": (0.0, 1.0),
                "initializer_range": (0.0, None), "attention_block_size": (0, None)},
        check=_check_model),
    "task": SectionSchema(
        _task_defaults,
        choices={"name": TASKS, "pooling": POOLINGS, "decoding": DECODINGS},
        ranges={"num_classes": (0, None), "dropout": (0.0, 1.0)},
        check=_check_task,
        entry_schemas={"heads": SectionSchema(
            _head_defaults,
            choices={"task": HEAD_TASKS, "pooling": POOLINGS, "decoding": DECODINGS},
            ranges={"num_classes": (0, None), "dropout": (0.0, 1.0),
                    "loss_weight": (0.0, None)})}),
}


def num_classes(section) -> int:
  """Number of classes of a task or head section: the labels' count, else `num_classes`."""
  return len(section.labels) if section.labels else section.num_classes
