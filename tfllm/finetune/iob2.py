"""IOB2 tag names: `O`, `B-<type>` (an entity's first word), `I-<type>` (its next words).

Entity F1 (`entity_f1`) and constrained decoding (`tag_decoding`) both read a tag set
through `iob2_scheme`.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

OUTSIDE, BEGIN, INSIDE = 0, 1, 2


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
