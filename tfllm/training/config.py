"""Schema of the `train` config section (see `tfllm.config`)."""

from __future__ import annotations

from tfllm.config import ConfigError, SectionSchema

JIT_COMPILE = ("auto", "on", "off")
DECAYS = ("cosine", "linear", "constant")


def _train_defaults():
  return dict(
      global_batch_size=16,      # examples per optimizer step, over all replicas and workers
      steps=1000,                # optimizer steps in all (a resumed run continues to this)
      steps_per_loop=50,         # steps run inside one tf.function call (one host round trip)
      grad_accum_steps=1,        # micro-batches per step: each is global_batch_size examples
      # Tensor-parallel degree N: attention heads, feed-forward units and the vocabulary
      # split over N local devices (docs/distributed.md, "Tensor parallelism"); 1 = off.
      model_parallel=1,
      eval_steps=20,             # eval batches per evaluation; 0 = no evaluation
      eval_every_steps=0,        # evaluate every N steps (rounded up to a loop); 0 = at the end
      seed=0,
      # Seed of the model's build alone (the new head's initial weights, the dropout layers'
      # seed generators); train.seed then draws the rest (data order). -1 = train.seed.
      # Runs that differ only in train.seed with one init_seed leave one shared start, which
      # a weight soup assumes (docs/finetuning.md, "Ensembles, weight soups and LiteRT").
      init_seed=-1,
      jit_compile="auto",        # auto: XLA on GPUs and TPUs (any strategy), off on CPUs
      # Wall-clock minutes of training (compilation included, evaluation at the end not):
      # then checkpoint and evaluate. The learning-rate decay ends with the budget or with
      # `steps`, whichever comes first, so with a budget `steps` is a cap. 0 = no budget.
      time_budget_minutes=0.0,
      checkpoint_every_steps=500,  # rounded up to a loop; 0 = only at the end
      keep_checkpoints=3,
      log_every_steps=0,         # progress line and TensorBoard scalars; 0 = every loop
      # For MFU; 0 = the table for the device and compute dtype (unknown devices: no MFU).
      peak_flops_per_device=0.0,
      sample_prompt="",          # causal LM: text a sample continuation starts from
      sample_new_tokens=0,       # causal LM: tokens to sample after training; 0 = no sample
      sample_temperature=0.8,    # 0 = greedy
      optimizer=dict(
          learning_rate=1e-3,
          weight_decay=0.1,
          decay_norms_biases=False,   # weight decay on rank-0/1 variables (norms, biases)
          decay_embeddings=False,     # weight decay on embedding tables
          beta_1=0.9,
          beta_2=0.95,
          epsilon=1e-8,
          clip_norm=1.0,              # global norm over all gradients; 0 = no clipping
          warmup_steps=100,
          decay="cosine",
          decay_steps=0,              # 0 = train.steps
          min_learning_rate_ratio=0.1,
          # Layer-wise learning-rate decay: block i of L trains at rate * layer_decay **
          # (L - i), the embeddings at rate * layer_decay ** (L + 1), heads at the full
          # rate (docs/finetuning.md); 1 = off.
          layer_decay=1.0,
          # A CRF tagging head's transition and start scores (config.task.decoding="crf")
          # train at rate * crf_rate_scale: at a fine-tuning rate they stay near their
          # initial 0 (docs/finetuning.md, CRF tagging); 1 = the rate of the rest.
          crf_rate_scale=1.0,
      ),
      early_stopping=dict(
          # Eval metric name (e.g. "loss"); "" = off. Needs eval_steps and eval_every_steps
          # > 0; the best evaluation's checkpoint is kept (model_dir/best_checkpoint/).
          metric="",
          mode="min",
          patience=0,                # evaluations without improvement before stopping
          min_delta=0.0,
      ),
  )


def _check_train(section):
  if section.optimizer.layer_decay <= 0:
    raise ConfigError(f"config.train.optimizer.layer_decay={section.optimizer.layer_decay} is "
                      "not accepted; use a factor in (0, 1] (1 = off, e.g. 0.8)")
  if section.optimizer.crf_rate_scale <= 0:
    raise ConfigError(f"config.train.optimizer.crf_rate_scale="
                      f"{section.optimizer.crf_rate_scale} is not accepted; use a factor > 0 "
                      "(1 = the rate of the rest, e.g. 20)")
  stop = section.early_stopping
  if stop.metric and stop.patience < 1:
    raise ConfigError(f"config.train.early_stopping.patience={stop.patience} must be >= 1 "
                      f"when config.train.early_stopping.metric={stop.metric!r} is set")
  if stop.metric and not section.eval_steps:
    raise ConfigError(f"config.train.early_stopping.metric={stop.metric!r} needs evaluations "
                      "but config.train.eval_steps=0 runs none; set eval_steps and "
                      "eval_every_steps > 0, or early_stopping.metric=''")
  if stop.metric and not section.eval_every_steps:
    raise ConfigError(f"config.train.early_stopping.metric={stop.metric!r} needs evaluations "
                      "during training but config.train.eval_every_steps=0 evaluates only at "
                      "the end; set eval_every_steps > 0, or early_stopping.metric=''")


SCHEMAS = {
    "train": SectionSchema(
        _train_defaults,
        choices={"optimizer.decay": DECAYS, "jit_compile": JIT_COMPILE,
                 "early_stopping.mode": ("min", "max")},
        ranges={"global_batch_size": (1, None), "steps": (0, None),
                "steps_per_loop": (1, None), "grad_accum_steps": (1, None),
                "model_parallel": (1, None), "init_seed": (-1, None),
                "eval_steps": (0, None), "eval_every_steps": (0, None),
                "time_budget_minutes": (0.0, None), "checkpoint_every_steps": (0, None),
                "keep_checkpoints": (1, None), "log_every_steps": (0, None),
                "peak_flops_per_device": (0.0, None), "sample_new_tokens": (0, None),
                "sample_temperature": (0.0, None),
                "optimizer.learning_rate": (0.0, None), "optimizer.weight_decay": (0.0, None),
                "optimizer.beta_1": (0.0, 1.0), "optimizer.beta_2": (0.0, 1.0),
                "optimizer.epsilon": (0.0, None), "optimizer.clip_norm": (0.0, None),
                "optimizer.warmup_steps": (0, None), "optimizer.decay_steps": (0, None),
                "optimizer.min_learning_rate_ratio": (0.0, 1.0),
                "optimizer.layer_decay": (0.0, 1.0), "optimizer.crf_rate_scale": (0.0, None),
                "early_stopping.patience": (0, None), "early_stopping.min_delta": (0.0, None)},
        check=_check_train),
}
