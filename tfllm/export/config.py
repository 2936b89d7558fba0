"""Schema of the `export` config section (see `tfllm.config`): SavedModel export and the
generation defaults of the served causal LM."""

from tfllm.config import SectionSchema


def _export_defaults():
  return dict(
      # Causal LM: what `serving_default` uses (the `generate` signature takes them as inputs).
      max_new_tokens=64,
      temperature=1.0,          # 0 = greedy
      top_k=0,                  # 0 = off
      top_p=1.0,                # 1 = off
      seed=0,
      max_length=0,             # prompt + continuation buffer; 0 = model.max_sequence_length
      # Classifiers and masked LM: tokens per text ([CLS] and [SEP] included); longer texts are
      # truncated. 0 = config.data.sequence_length (what the model was trained on).
      sequence_length=0,
      top_predictions=5,        # masked LM: candidates returned for each [MASK]
      # XLA inside the served graph (generation loop, model forward). TF Serving runs it on CPU
      # only with --xla_cpu_compilation_enabled; off is what every model server runs.
      jit_compile=False,
      warmup=True,              # write assets.extra/tf_serving_warmup_requests
  )


SCHEMAS = {
    "export": SectionSchema(
        _export_defaults,
        ranges={"max_new_tokens": (0, None), "temperature": (0.0, None), "top_k": (0, None),
                "top_p": (0.0, 1.0), "max_length": (0, None), "sequence_length": (0, None),
                "top_predictions": (1, None)}),
}
