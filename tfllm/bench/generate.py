"""Generation speed: prompt + new tokens per second and per-token latency, optionally next to
KerasHub's `GPT2CausalLM.generate` of the same shape.

Both sides decode greedily with a KV cache, from the same random prompts, for exactly
`new_tokens` tokens (no stop token), in a buffer of `prompt_length + new_tokens`, XLA when
`jit_compile`. tfllm runs `tfllm.models.generation.Generator` (the loop `generate` and the
export use).
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import keras
import numpy as np

from tfllm.bench import keras_hub_models, measure
from tfllm.models import build
from tfllm.models.generation import Generator


def benchmark_generate(config, batch_sizes: Sequence[int] = (1, 8), prompt_length: int = 16,
                       new_tokens: int = 64, repeats: int = 5, jit_compile: bool = True,
                       compare: Optional[str] = None,
                       log: Callable[[str], None] = print) -> Dict:
  """Times greedy generation for each batch size.

  Returns:
    A JSON-ready dict: per batch size, per model, seconds per call, new tokens/s,
    per-token latency (seconds per call / new tokens) as min/median/max, and the
    tfllm/KerasHub speed ratio.
  """
  if not config.model.causal:
    raise ValueError("generate mode needs a causal model (config.model.causal=True)")
  if compare not in (None, "", "keras_hub"):
    raise ValueError(f"compare={compare!r} is not accepted; use keras_hub or nothing")
  max_length = prompt_length + new_tokens
  if prompt_length < 1 or new_tokens < 1 or max_length > config.model.max_sequence_length:
    raise ValueError(f"prompt_length={prompt_length} + new_tokens={new_tokens} must be >= 2 "
                     f"and fit in model.max_sequence_length={config.model.max_sequence_length}")
  model = build(config)
  generator = Generator(model, stop_token_ids=(), pad_token_id=0, max_length=max_length,
                        jit_compile=jit_compile)
  keras_hub_lm = None
  if compare:
    keras_hub_models.comparison_kind(config.model)
    keras_hub_lm = keras_hub_models.gpt2_causal_lm(config.model, jit_compile=jit_compile)
    counts = dict(tfllm=model.count_params(), keras_hub=keras_hub_lm.count_params())
    if counts["tfllm"] != counts["keras_hub"]:
      raise ValueError(f"the compared models differ in shape: parameters {counts}")

  rng = np.random.default_rng(0)
  per_batch = {}
  for batch_size in batch_sizes:
    prompts = rng.integers(1, config.model.vocab_size, size=(batch_size, prompt_length))
    runners = {}
    prompt_lists = prompts.tolist()

    def run_tfllm():
      output = generator.generate(prompt_lists, max_new_tokens=new_tokens)
      assert len(output.token_ids[0]) == new_tokens, len(output.token_ids[0])

    runners["tfllm"] = run_tfllm
    if keras_hub_lm is not None:
      token_ids = np.zeros((batch_size, max_length), "int32")
      token_ids[:, :prompt_length] = prompts
      inputs = {"token_ids": token_ids,
                "padding_mask": np.arange(max_length)[None, :].repeat(batch_size, 0)
                < prompt_length}

      def run_keras_hub(inputs=inputs):
        output = keras_hub_lm.generate(inputs, stop_token_ids=None)
        np.asarray(output["token_ids"])

      runners["keras_hub"] = run_keras_hub
    for name, runner in runners.items():
      log(f"[generate] batch {batch_size}: {name} compiling and warming up")
      runner()
      runner()
    log(f"[generate] batch {batch_size}: timing {repeats} rounds, alternating {list(runners)}")
    timings = measure.time_alternately(runners, repeats)
    entry = {}
    for name, timing in timings.items():
      seconds = timing["seconds"]
      entry[name] = dict(
          seconds_per_call=measure.summarize(seconds),
          new_tokens_per_second=measure.summarize([batch_size * new_tokens / s for s in seconds]),
          seconds_per_token=measure.summarize([s / new_tokens for s in seconds]),
          cpu_seconds_per_call=measure.summarize(timing["cpu_seconds"]))
    if keras_hub_lm is not None:
      entry["ratio new_tokens_per_second tfllm/keras_hub"] = measure.ratio_summary(
          timings["keras_hub"]["seconds"], timings["tfllm"]["seconds"])
      entry["ratio cpu time per call keras_hub/tfllm"] = measure.ratio_summary(
          timings["keras_hub"]["cpu_seconds"], timings["tfllm"]["cpu_seconds"])
    per_batch[str(batch_size)] = entry
  return dict(mode="generate", prompt_length=prompt_length, new_tokens=new_tokens,
              sampler="greedy", repeats=repeats, jit_compile=bool(jit_compile),
              dtype_policy=keras.mixed_precision.global_policy().name,
              parameters=int(model.count_params()), batch_sizes=per_batch)
