"""Ensembles and weight soups of fine-tuned model dirs, exported like one model.

Members are training directories of the same task, labels and preprocessing (tokenizer,
sequence length, text feature): `load_members` checks their `config.json` and vocabulary and
names the first difference.

* Ensemble (`EnsembleForward`, `export_ensemble`): one SavedModel holding every member. The
  served signatures and output keys are a single model's (`tfllm.export.signatures`): the
  members' forward passes are combined into one "logits" tensor that the single model's
  output code turns into the same answer as averaging:
    sequence classification: log of the mean of the members' softmax probabilities, so the
      served `probabilities` (a softmax of it) are exactly that mean;
    token classification: the mean of the members' log-probabilities per word piece, then the
      head's decoding (argmax or IOB2 Viterbi) once. A softmax / log-softmax of it shifts
      each position's scores by one constant, which changes neither the argmax nor the best
      Viterbi path. CRF taggers (`TagScores`): the mean of their emissions and of their
      transition scores, decoded once (a sentence's mean log-probability over the members
      is that CRF's score minus a constant per sentence, so the best path is the same).
* Weight soups (Wortsman et al. 2022, "Model soups"): members fine-tuned from the same
  checkpoint, of identical architecture; the soup is their averaged weights, exported as an
  ordinary single model. `uniform`: the mean of all members. `greedy`: members sorted by their
  validation metric, each added only if the soup's metric does not get worse
  (`greedy_soup`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import ml_collections
import numpy as np
import tensorflow as tf

from tfllm import config as config_lib
from tfllm import models
from tfllm.export import saved_model, trained
from tfllm.tagging.scores import TagScores

TASKS = ("sequence_classification", "token_classification")
SOUPS = ("uniform", "greedy")
# `assets.extra/` file of an ensemble or soup export: its members (and the greedy soup's
# ingredients and metrics).
MEMBERS_FILE = "tfllm_members.json"
# What members must share: config keys (dotted) that shape the served input and output.
SHARED_KEYS = ("task.name", "task.labels", "task.num_classes", "task.decoding",
               "tokenizer.type", "tokenizer.lowercase", "data.text_feature",
               "data.sequence_length", "export.sequence_length")


@dataclasses.dataclass
class Member:
  """A loaded member: its directory, model, tokenizer and config (`tfllm.export.trained.load_trained`)."""
  model_dir: str
  model: object
  tokenizer: object
  config: object


def _value(config, dotted: str):
  node = config
  for key in dotted.split("."):
    if key not in node:
      return None
    node = node[key]
  return tuple(node) if isinstance(node, (list, tuple)) else node


def _vocabulary(tokenizer):
  return [tokenizer.id_to_token(i) for i in range(int(tokenizer.vocabulary_size()))]


def check_members(members: Sequence[Member], keys: Sequence[str] = SHARED_KEYS) -> None:
  """Raises ConfigError naming the first member that differs from the first one in `keys`
  of its config or in its vocabulary."""
  first = members[0]
  vocabulary = _vocabulary(first.tokenizer)
  for member in members[1:]:
    for key in keys:
      if _value(member.config, key) != _value(first.config, key):
        raise config_lib.ConfigError(
            f"{member.model_dir}: config.{key}={_value(member.config, key)!r} differs from "
            f"{_value(first.config, key)!r} in {first.model_dir}; ensemble and soup members "
            "must share task, labels and preprocessing")
    if _vocabulary(member.tokenizer) != vocabulary:
      raise config_lib.ConfigError(
          f"{member.model_dir}: its tokenizer's vocabulary differs from {first.model_dir}'s; "
          "ensemble and soup members must share the tokenizer")


def load_members(model_dirs: Sequence[str]) -> List[Member]:
  """Loads every dir (`tfllm.export.load_trained`) and checks they can be combined.

  Raises:
    ConfigError: fewer than two dirs, a task other than `TASKS`, or members that differ in
      task, labels or preprocessing (the message names the dir and the difference).
  """
  model_dirs = [d for d in model_dirs if d]
  if len(model_dirs) < 2:
    raise config_lib.ConfigError(f"--ensemble={','.join(model_dirs)!r} names "
                                 f"{len(model_dirs)} model dir(s); an ensemble or soup needs "
                                 "two or more, comma-separated")
  members = [Member(d, *trained.load_trained(d)) for d in model_dirs]
  for member in members:
    if member.config.task.name not in TASKS:
      raise config_lib.ConfigError(
          f"{member.model_dir}: config.task.name={member.config.task.name!r} is not accepted "
          f"in an ensemble or soup; accepted: {', '.join(TASKS)}")
  check_members(members)
  return members


class EnsembleForward:
  """The members' forward passes combined into one logits tensor (see the module docstring).

  Args:
    models: task models of one task (`sequence_classification` or `token_classification`)
      taking the same features: `model(features, training=False)` -> float logits
      `[batch, num_classes]` or `[batch, sequence_length, num_tags]`.
    task: that task's name.

  Call: `features` (`{"token_ids", "padding_mask"}`, int32 / bool `[batch, sequence_length]`)
  -> float32 `[batch, num_classes]` log mean probabilities (classification) or
  `[batch, sequence_length, num_tags]` mean log-probabilities (tagging).

  `backbone.max_sequence_length` is the members' smallest, which is what the signatures check
  the served sequence length against.

  Example:

    forward = EnsembleForward([model_a, model_b], "sequence_classification")
    log_mean_probabilities = forward({"token_ids": ids, "padding_mask": mask})
  """

  def __init__(self, models: Sequence, task: str):
    if task not in TASKS:
      raise config_lib.ConfigError(f"task={task!r} is not accepted in an ensemble; accepted: "
                                   f"{', '.join(TASKS)}")
    self.models = list(models)
    self.task = task
    self.backbone = types.SimpleNamespace(
        max_sequence_length=min(m.backbone.max_sequence_length for m in self.models))

  def __call__(self, features, training=False):
    del training  # serving only
    outputs = [model(features, training=False) for model in self.models]
    if all(isinstance(output, TagScores) for output in outputs):
      # CRF taggers: the mean of the members' sentence log-probabilities is, up to a constant
      # per sentence, the CRF of their mean emissions and mean transition scores.
      return TagScores(*(tf.reduce_mean(tf.stack([tf.cast(getattr(o, field), tf.float32)
                                                  for o in outputs]), axis=0)
                         for field in ("emissions", "transitions", "start")))
    log_probabilities = tf.stack([
        tf.nn.log_softmax(tf.cast(output, tf.float32), axis=-1) for output in outputs])
    if self.task == "sequence_classification":
      return tf.reduce_logsumexp(log_probabilities, axis=0) - math.log(len(self.models))
    return tf.reduce_mean(log_probabilities, axis=0)


def export_ensemble(members: Sequence[Member], export_dir: str, version: Optional[int] = None,
                    overwrite: bool = False, overrides=None) -> str:
  """One SavedModel serving the average of `members` (the first member's config and
  tokenizer; `overrides` replace `export` section values). Returns the version's path."""
  config = members[0].config
  if overrides:
    config.export.update(dict(overrides))
  forward = EnsembleForward([m.model for m in members], config.task.name)
  record = {"kind": "ensemble", "members": [m.model_dir for m in members]}
  return saved_model.export_saved_model(
      forward, members[0].tokenizer, config, export_dir, version, overwrite,
      extra_files={MEMBERS_FILE: json.dumps(record, indent=2)})


# ----------------------------------------------------------------------------- soups


def check_same_architecture(members: Sequence[Member]) -> None:
  """Raises ConfigError unless every member has the first one's model config and variables
  (names and shapes): a soup averages weights element by element."""
  first = members[0]
  for member in members[1:]:
    if member.config.model.to_dict() != first.config.model.to_dict():
      diff = sorted(k for k in set(first.config.model) | set(member.config.model)
                    if _value(first.config.model, k) != _value(member.config.model, k))
      raise config_lib.ConfigError(
          f"{member.model_dir}: config.model differs from {first.model_dir}'s in "
          f"{', '.join(diff)}; a weight soup needs identical architectures")
    # Shapes in order (names carry Keras's per-process layer counters, which differ).
    shapes = [tuple(w.shape) for w in member.model.weights]
    if shapes != [tuple(w.shape) for w in first.model.weights]:
      raise config_lib.ConfigError(
          f"{member.model_dir}: its variables differ from {first.model_dir}'s in number or "
          "shapes; a weight soup needs identical architectures")
    if member.config.finetune.quantize:
      raise config_lib.ConfigError(
          f"{member.model_dir}: config.finetune.quantize={member.config.finetune.quantize!r}; "
          "a weight soup averages float weights: use members trained without quantize")


def average_weights(weight_lists: Sequence[Sequence[np.ndarray]]) -> List[np.ndarray]:
  """The element-wise mean of each weight over the lists (float weights; any other dtype,
  e.g. a random generator's state, is taken from the first list)."""
  averaged = []
  for values in zip(*weight_lists):
    if np.issubdtype(values[0].dtype, np.floating):
      averaged.append(np.mean(np.stack(values), axis=0).astype(values[0].dtype))
    else:
      averaged.append(values[0])
  return averaged


@dataclasses.dataclass
class GreedySoup:
  """What `greedy_soup` chose: the averaged `weights`, the members' indices that entered
  (`ingredients`, in the order added), each member's own metric and the soup's metric."""
  weights: List[np.ndarray]
  ingredients: List[int]
  member_metrics: List[float]
  soup_metric: float


def greedy_soup(model, weight_lists: Sequence[Sequence[np.ndarray]],
                evaluate: Callable[[object], float], higher_is_better: bool = True,
                log: Callable[[str], None] = lambda line: None) -> GreedySoup:
  """Greedy soup (Wortsman et al. 2022, recipe 1): members sorted by their own metric, best
  first; each next member enters if the soup's metric with it is not worse than without.

  Args:
    model: a model of the members' architecture; its weights are set to each candidate in
      turn (and left at the chosen soup's).
    weight_lists: each member's `model.get_weights()`.
    evaluate: `model -> metric` on the validation split.
    higher_is_better: the metric's direction.
    log: where one line per step goes.
  """
  sign = 1.0 if higher_is_better else -1.0
  member_metrics = []
  for index, weights in enumerate(weight_lists):
    model.set_weights(weights)
    member_metrics.append(float(evaluate(model)))
    log(f"member {index}: {member_metrics[-1]:.6g}")
  order = sorted(range(len(weight_lists)), key=lambda i: -sign * member_metrics[i])
  ingredients, best = [order[0]], member_metrics[order[0]]
  for index in order[1:]:
    candidate = average_weights([weight_lists[i] for i in ingredients + [index]])
    model.set_weights(candidate)
    metric = float(evaluate(model))
    entered = sign * metric >= sign * best
    log(f"soup + member {index}: {metric:.6g} ({'kept' if entered else 'left out'})")
    if entered:
      ingredients.append(index)
      best = metric
  weights = average_weights([weight_lists[i] for i in ingredients])
  model.set_weights(weights)
  return GreedySoup(weights, ingredients, member_metrics, best)


def soup_metric(config) -> Tuple[str, bool]:
  """The metric a greedy soup compares (`config.export.soup_metric`, or the task's own:
  accuracy, entity micro F1) and whether higher is better."""
  name = config.export.soup_metric
  if not name:
    name = ("accuracy" if config.task.name == "sequence_classification"
            else "entity/micro/f1")
  return name, config.export.soup_mode == "max"


def export_soup(members: Sequence[Member], method: str, export_dir: str,
                version: Optional[int] = None, overwrite: bool = False, overrides=None,
                evaluate: Optional[Callable[[object], Dict[str, float]]] = None,
                log: Callable[[str], None] = lambda line: None) -> str:
  """Exports the `method` soup ("uniform" or "greedy") of `members` as a single model.

  Args:
    evaluate: for "greedy": `model -> metrics dict` on `config.export.soup_split` (e.g.
      `tfllm.training.evaluation.evaluator` of `soup_eval_config(config)`); the metric is
      `soup_metric(config)`.

  Returns:
    The version's path; `assets.extra/tfllm_members.json` says which members entered.
  """
  if method not in SOUPS:
    raise config_lib.ConfigError(f"--soup={method!r} is not accepted; accepted: "
                                 f"{', '.join(SOUPS)} (or none: an ensemble)")
  check_same_architecture(members)
  config = members[0].config
  if overrides:
    config.export.update(dict(overrides))
  config_lib.validate(config)
  model = members[0].model
  weight_lists = [m.model.get_weights() for m in members]
  dirs = [m.model_dir for m in members]
  record = {"kind": f"{method}_soup", "members": dirs}
  seeds = [models.build_seed(m.config.train) for m in members]
  if len(set(seeds)) > 1:
    # Not refused: the averaged backbone still starts from one checkpoint, and soups of
    # such members were measured (docs/finetuning.md); the new head is what differs.
    log(f"the members' models were built from different seeds ({', '.join(map(str, seeds))}): "
        "each started from its own randomly drawn head; a soup assumes one shared start "
        "(train them with one --config.train.init_seed)")
  if method == "uniform":
    model.set_weights(average_weights(weight_lists))
  else:
    if evaluate is None:
      raise ValueError("a greedy soup needs `evaluate` (the validation metric)")
    name, higher = soup_metric(config)

    def metric(candidate):
      results = evaluate(candidate)
      if name not in results:
        raise config_lib.ConfigError(
            f"config.export.soup_metric={name!r} is not among the evaluation's metrics; "
            f"accepted: {', '.join(sorted(results))}")
      return results[name]

    split = soup_eval_config(config).data.eval_split
    log(f"greedy soup: members compared by {name} on the {split} split")
    soup = greedy_soup(model, weight_lists, metric, higher, log)
    record.update(metric=name, split=split, member_metrics=dict(zip(dirs, soup.member_metrics)),
                  ingredients=[dirs[i] for i in soup.ingredients],
                  soup_metric=soup.soup_metric)
    log(f"greedy soup of {len(soup.ingredients)} of {len(dirs)} members "
        f"({name} {soup.soup_metric:.6g}): {', '.join(record['ingredients'])}")
  return saved_model.export_saved_model(
      model, members[0].tokenizer, config, export_dir, version, overwrite,
      extra_files={MEMBERS_FILE: json.dumps(record, indent=2)})


def export_members(model_dirs: Sequence[str], export_dir: str, soup: str = "",
                   version: Optional[int] = None, overwrite: bool = False, overrides=None,
                   evaluator: Optional[Callable] = None,
                   log: Callable[[str], None] = lambda line: None) -> str:
  """`tfllm-export --ensemble=DIRS [--soup=uniform|greedy]`: an ensemble when `soup` is
  empty, else that soup.

  Args:
    evaluator: for a greedy soup: `(config, tokenizer) -> (model -> metrics dict)` on the
      validation split (`tfllm.training.evaluation.evaluator`).
  """
  if soup and soup not in SOUPS:
    raise config_lib.ConfigError(f"--soup={soup!r} is not accepted; accepted: "
                                 f"{', '.join(SOUPS)}, or empty for an ensemble")
  members = load_members(model_dirs)
  if dict(overrides or {}).get("format", members[0].config.export.format) != "saved_model":
    raise config_lib.ConfigError("config.export.format='litert' is not accepted with "
                                 "--ensemble; ensembles and soups are exported as SavedModels "
                                 "(format 'saved_model'); LiteRT takes one --model_dir")
  if not soup:
    return export_ensemble(members, export_dir, version, overwrite, overrides)
  evaluate = None
  if soup == "greedy":
    if evaluator is None:
      raise ValueError("a greedy soup needs an evaluator")
    evaluate = evaluator(soup_eval_config(members[0].config, overrides), members[0].tokenizer)
  return export_soup(members, soup, export_dir, version, overwrite, overrides, evaluate, log)


def soup_eval_config(config, overrides=None):
  """A copy of a member's config that evaluates on `config.export.soup_split` (validation by
  default), whatever split the member was last evaluated on: `--mode=eval
  --config.data.eval_split=test` rewrites a model dir's config.json, and a soup chosen on
  test would report a test figure that was selected on it."""
  config = ml_collections.ConfigDict(config.to_dict())
  split = dict(overrides or {}).get("soup_split") or config.export.get("soup_split",
                                                                       "validation")
  config.data.eval_split = split
  return config


def read_members(version_dir: str) -> Optional[dict]:
  """The members record of an ensemble or soup export (None for a single model's)."""
  path = os.path.join(version_dir, "assets.extra", MEMBERS_FILE)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.loads(f.read())
