"""Label names and label ids of classification tasks.

Functions take the `data` and `task` config sections: the label set comes from
`task.labels` (else the source's class names), the feature and dataset names from `data`.
"""

from __future__ import annotations

from typing import Optional, Tuple

import tensorflow as tf

from tfllm.data import sources


def configured_labels(task) -> Tuple[str, ...]:
  """`task.labels` as strings (empty when the section has none)."""
  labels = getattr(task, "labels", None) or ()
  return tuple(str(label) for label in labels)


def resolve_labels(data, task, source: sources.Source) -> Optional[Tuple[str, ...]]:
  """Label names of a classification task: `task.labels`, else the source's.

  Returns None for integer labels without names (then `task.num_classes` bounds them).
  """
  configured = configured_labels(task)
  if configured:
    if source.label_names:
      unknown = [name for name in source.label_names if name not in configured]
      if unknown:
        raise ValueError(f"labels {unknown} of {data.dataset!r} feature "
                         f"{source.label_feature!r} are outside config.task.labels="
                         f"{list(configured)}; add them or leave config.task.labels empty")
    return configured
  return source.label_names


def label_names(config, split: Optional[str] = None) -> Optional[Tuple[str, ...]]:
  """The task's label names for `config` (what `num_classes` must equal), or None."""
  source = sources.load_source(config.data, split or config.data.train_split)
  if source.label_feature is None:
    return configured_labels(config.task) or None
  return resolve_labels(config.data, config.task, source)


def _checked(ids, checks):
  with tf.control_dependencies(checks):
    return tf.identity(ids)


def _string_mapper(names, what: str):
  lookup = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(tf.constant(names), tf.range(len(names))), -1)

  def map_string(label):
    ids = lookup.lookup(label)
    return _checked(ids, [tf.debugging.assert_non_negative(
        ids, message=f"a label of {what} is outside the label set {list(names)}")])
  return map_string


def _int_mapper(num_classes: int, what: str):
  def map_int(label):
    ids = tf.cast(label, tf.int32)
    return _checked(ids, [
        tf.debugging.assert_non_negative(ids, message=f"a label of {what} is below 0"),
        tf.debugging.assert_less(
            ids, num_classes,
            message=f"a label of {what} is outside the label set [0, {num_classes})")])
  return map_int


def label_mapper(data, task, source: sources.Source):
  """A function: raw label tensor (any shape) -> int32 class ids, checked against the set."""
  if source.label_feature is None:
    raise ValueError(f"config.data.label_feature={data.label_feature!r} is not a "
                     f"feature of {data.dataset!r}; {task.name} needs labels")
  names = resolve_labels(data, task, source)
  what = f"config.data.label_feature={data.label_feature!r}"
  if source.label_names:
    # Source class ids -> positions in `names` (the same unless config.task.labels reorders).
    table = tf.constant([names.index(name) for name in source.label_names], tf.int32)
    return lambda label: tf.gather(table, tf.cast(label, tf.int32))
  spec = source.examples.element_spec[source.label_feature]
  if spec.dtype == tf.string:
    if not names:
      raise ValueError(f"{what} holds strings; name the classes in config.task.labels")
    return _string_mapper(names, what)
  num_classes = len(names) if names else int(getattr(task, "num_classes", 0) or 0)
  if num_classes <= 0:
    raise ValueError(f"{what} holds integer ids without names; set config.task.labels or "
                     "config.task.num_classes")
  return _int_mapper(num_classes, what)


def scalar(value, batched: bool = False):
  """A per-example label: a length-1 vector (TFRecord features parse as vectors) -> scalar;
  with `batched`, a batch of them (`[batch]` or `[batch, 1]`) -> `[batch]`."""
  return value if value.shape.rank == int(batched) else value[..., 0]
