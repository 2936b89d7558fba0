"""Schema of the `export` config section (see `tfllm.config`)."""

from tfllm.config import SectionSchema


def _export_defaults():
  return dict(
      max_new_tokens=64,
      temperature=1.0,
      top_k=0,
      top_p=1.0,
  )


SCHEMAS = {
    "export": SectionSchema(
        _export_defaults,
        ranges={"max_new_tokens": (0, None), "temperature": (0.0, None), "top_k": (0, None),
                "top_p": (0.0, 1.0)}),
}
