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
      # Greedy weight soup (tfllm-export --ensemble=DIRS --soup=greedy): the validation metric
      # that decides which members enter ("" = accuracy / entity/micro/f1 by task) and its
      # direction (docs/finetuning.md, "Ensembles and weight soups").
      soup_metric="",
      soup_mode="max",
      # The split a greedy soup compares members on, whatever split each member was last
      # evaluated on (never the test split you report).
      soup_split="validation",
      # What tfllm-export writes: a TF Serving SavedModel, or a LiteRT (TFLite) flatbuffer of a
      # classifier (token ids in; docs/serving.md, "LiteRT") with its weights' quantization.
      format="saved_model",
      litert_quantize="none",
      litert_representative_examples=256,  # full int8: training-split examples calibrated on
  )


SCHEMAS = {
    "export": SectionSchema(
        _export_defaults,
        choices={"soup_mode": ("max", "min"), "format": ("saved_model", "litert"),
                 "litert_quantize": ("none", "dynamic_int8", "int8")},
        ranges={"litert_representative_examples": (1, None), "max_new_tokens": (0, None), "temperature": (0.0, None), "top_k": (0, None),
                "top_p": (0.0, 1.0), "max_length": (0, None), "sequence_length": (0, None),
                "top_predictions": (1, None)}),
}
