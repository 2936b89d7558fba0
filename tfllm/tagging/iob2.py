"""IOB2 tag names: `O`, `B-<type>` (an entity's first word), `I-<type>` (its next words).

Entity F1 (`tfllm.metrics.entity_f1`), constrained decoding (`tfllm.tagging.decoding`) and
the model config's check of `decoding` all read a tag set through `iob2_scheme` (strict: a tag
that is not `O`, `B-<type>` or `I-<type>` is an error).
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

OUTSIDE, BEGIN, INSIDE = 0, 1, 2

# How a token-classification head turns logits into tags (`config.task.decoding`): here, not
# in the model config, so that the decoder (level 1) and the schema read one tuple.
# "crf": a learned transition layer, trained with the sentence's likelihood and decoded by
# Viterbi under IOB2's constraints (`tfllm.tagging.crf`).
DECODINGS = ("argmax", "iob2_viterbi", "crf")


def tag_decoding(section) -> str:
  """`decoding` of a task or head section: "argmax" where a model dir's config.json was
  written before the key existed, so older model dirs evaluate and export as before."""
  return section.get("decoding", "argmax")


def iob2_scheme(labels: Sequence[str]) -> Tuple[List[int], List[int], List[str]]:
  """Parses IOB2 tag names.

  Args:
    labels: tag names in label-id order, e.g. `["O", "B-PER", "I-PER", ...]`.

  Returns:
    `(prefixes, types, type_names)`: per label id its prefix (`OUTSIDE`, `BEGIN`, `INSIDE`)
    and entity type index (-1 for `O`), and the sorted entity type names.

  Raises:
    ValueError: a label that is not `O`, `B-<type>` or `I-<type>`.
  """
  parsed = []
  for label in labels:
    if label == "O":
      parsed.append((OUTSIDE, None))
    elif len(label) > 2 and label[:2] in ("B-", "I-"):
      parsed.append((BEGIN if label[0] == "B" else INSIDE, label[2:]))
    else:
      raise ValueError(f"tag {label!r} is not an IOB2 tag; accepted: 'O', 'B-<type>', "
                       "'I-<type>'")
  type_names = sorted({t for _, t in parsed if t is not None})
  prefixes = [p for p, _ in parsed]
  types = [-1 if t is None else type_names.index(t) for _, t in parsed]
  return prefixes, types, type_names
