"""How many characters of text each token id stands for: the denominator of per-character loss.

Per-token loss cannot be compared across tokenizers (a token is a byte for one, a word for
another); loss per character of the text can. `characters_per_token(tokenizer)` gives, for every
id, the number of Unicode characters (code points) the id adds to the decoded text, so that for
a sequence of ids `sum(table[ids])` is the length of the text they decode to, whichever block
boundaries cut the sequence (packing never drops or double-counts a character).

Conventions, per kind:
  byte            a UTF-8 lead byte or ASCII byte counts 1, a continuation byte (0x80-0xBF) 0;
                  special tokens (ids >= 256) decode to nothing: 0.
  word_piece      a `##x` piece counts `len(x)`; a word-start piece counts its length + 1: the
                  space detokenization puts before it. Special tokens (`[PAD] [CLS] [SEP]
                  [MASK]`, and any other `[...]` token) count 0; `[UNK]` (it replaces a whole
                  word) counts like a word-start piece, `len("[UNK]") + 1`.
  sentence_piece  the piece's length, `▁` counting as the space it decodes to; control symbols
                  (`<pad> <s> </s> [MASK]`) 0; `<unk>` the length of SentencePiece's unknown
                  surface ` ⁇ ` (3); byte pieces (`<0xNN>`) as in `byte`.

"Space before" conventions (word_piece, sentence_piece) mean that the decoded text of a whole
sequence is one character shorter than the sum when the sequence starts with a word-start
piece: detokenization drops that leading space. Inside a stream of documents that space is a
real separator between the previous token and this one, so the convention counts each
character once over any cut into blocks.

Only the byte-level tokenizer reproduces the raw text exactly; WordPiece detokenization drops
newlines and puts spaces around punctuation, SentencePiece (as trained by
`tfllm.data.tokenizers`) folds newlines and runs of spaces into one space. Per-character figures
are comparable across tokenizers only when both reproduce the text (see
docs/learning_quality.md).
"""

from __future__ import annotations

import keras_hub
import numpy as np

from tfllm.data.tokenizers import ByteLevelTokenizer, sentence_piece_proto

# SentencePiece's default decoding of an unknown piece (`unk_surface`): " \u2047 ".
_SENTENCE_PIECE_UNK_CHARACTERS = 3
_WORD_PIECE_SUFFIX = "##"


def utf8_byte_characters(byte_values: np.ndarray) -> np.ndarray:
  """1 for a byte that starts a UTF-8 character (ASCII or lead byte), 0 for a continuation."""
  byte_values = np.asarray(byte_values)
  return np.where((byte_values >= 0x80) & (byte_values < 0xC0), 0, 1).astype(np.int32)


def _byte_level(tokenizer: ByteLevelTokenizer) -> np.ndarray:
  counts = np.zeros([tokenizer.vocabulary_size()], np.int32)
  counts[:256] = utf8_byte_characters(np.arange(256))
  return counts


def _is_word_piece_special(token: str) -> bool:
  return len(token) > 2 and token.startswith("[") and token.endswith("]")


def _word_piece(tokenizer: keras_hub.tokenizers.WordPieceTokenizer) -> np.ndarray:
  suffix = getattr(tokenizer, "suffix_indicator", _WORD_PIECE_SUFFIX)
  unk = getattr(tokenizer, "oov_token", "[UNK]")
  counts = []
  for token in tokenizer.get_vocabulary():
    if token != unk and _is_word_piece_special(token):
      counts.append(0)
    elif token.startswith(suffix) and len(token) > len(suffix):
      counts.append(len(token) - len(suffix))
    else:
      counts.append(len(token) + 1)
  return np.asarray(counts, np.int32)


def _sentence_piece(tokenizer: keras_hub.tokenizers.SentencePieceTokenizer) -> np.ndarray:
  import sentencepiece  # pylint: disable=g-import-not-at-top
  processor = sentencepiece.SentencePieceProcessor(
      model_proto=sentence_piece_proto(tokenizer))
  counts = np.zeros([processor.get_piece_size()], np.int32)
  for i in range(processor.get_piece_size()):
    if processor.is_control(i) or processor.is_unused(i):
      continue
    if processor.is_unknown(i):
      counts[i] = _SENTENCE_PIECE_UNK_CHARACTERS
    elif processor.is_byte(i):
      counts[i] = utf8_byte_characters(int(processor.id_to_piece(i)[1:-1], 16))
    else:
      counts[i] = len(processor.id_to_piece(i))  # "▁" is one character, like the space.
  return counts


def characters_per_token(tokenizer) -> np.ndarray:
  """Characters each token id contributes to the text the ids decode to.

  Args:
    tokenizer: a `ByteLevelTokenizer`, keras-hub `WordPieceTokenizer` or
      `SentencePieceTokenizer` (what `tfllm.data.tokenizers.get_tokenizer` returns).

  Returns:
    int32 `[tokenizer.vocabulary_size()]`: see the module docstring for each kind's convention.

  Raises:
    ValueError: another kind of tokenizer.
  """
  if isinstance(tokenizer, ByteLevelTokenizer):
    return _byte_level(tokenizer)
  if isinstance(tokenizer, keras_hub.tokenizers.SentencePieceTokenizer):
    return _sentence_piece(tokenizer)
  if isinstance(tokenizer, keras_hub.tokenizers.WordPieceTokenizer):
    return _word_piece(tokenizer)
  raise ValueError(f"cannot count characters per token of {type(tokenizer).__name__}; "
                   "accepted: ByteLevelTokenizer, WordPieceTokenizer, SentencePieceTokenizer")
