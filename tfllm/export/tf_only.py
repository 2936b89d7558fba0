"""Runs an exported SavedModel the way a model server does: TensorFlow alone, no Python of ours.

This file imports only `tensorflow` and `numpy` (never tfllm or keras), so it is run as a
script in a fresh process by tests and benchmarks:

  python tfllm/export/tf_only.py REQUEST.pkl RESULT.pkl
  python tfllm/export/tf_only.py saved_model_cli run --dir=... (saved_model_cli + TF-Text ops)

REQUEST.pkl is a pickled dict:
  path:      the SavedModel directory (a version directory);
  calls:     list of `(signature, {input name: numpy array})`, each run once;
  latency:   list of `(label, signature, inputs, iterations)`, timed after one warm-up call;
  list_ops:  whether to return the graph's ops, split into core TF, TF-Text and others.
RESULT.pkl gets `outputs` (one dict of numpy arrays per call, or the error's first line),
`latency` (label -> seconds per call, sorted), `ops` and `modules` (the top-level packages
imported). keras, keras_hub, tensorflow_text and tfllm are made unimportable before
TensorFlow is imported (TF 2.21's `import tensorflow` otherwise imports Keras 3 itself), so
a graph that needed any of them fails here.

TF-Text's kernels are registered with `tf.load_op_library` on its `python/ops/*.so` files;
`import tensorflow_text` would import keras. TF Serving's model server links these ops.
"""

import glob
import os
import pickle
import sys
import time

# Top-level packages made unimportable before TensorFlow is imported (when run as a script).
BLOCKED_MODULES = ("keras", "tfllm", "keras_hub", "tensorflow_text", "tf_keras")
tf = None  # TensorFlow, imported by `_import_tensorflow` once the blocks are in place.


def _import_tensorflow():
  """Imports TensorFlow with BLOCKED_MODULES unimportable; only for a fresh process."""
  global tf
  here = os.path.dirname(os.path.abspath(__file__))
  # Run as a script, this file's folder heads sys.path; its neighbours must not shadow modules.
  sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
  for name in BLOCKED_MODULES:
    if name in sys.modules and sys.modules[name] is not None:
      raise RuntimeError(f"{name} is already imported: run tf_only.py in a fresh process")
    sys.modules[name] = None
  import tensorflow  # pylint: disable=g-import-not-at-top
  tf = tensorflow


# Core TF ops that need a Python interpreter: never allowed in a served graph.
PYTHON_OPS = ("PyFunc", "PyFuncStateless", "EagerPyFunc")


def text_op_libraries():
  """Paths of TF-Text's op libraries (found without importing tensorflow_text)."""
  for entry in sys.path:
    libraries = sorted(glob.glob(os.path.join(entry or ".", "tensorflow_text", "python", "ops",
                                              "*.so")))
    if libraries:
      return libraries
  raise RuntimeError("tensorflow_text's op libraries (tensorflow_text/python/ops/*.so) are not "
                     "on sys.path; install tensorflow-text")


def _graph_defs(path):
  """The `GraphDef` of each meta graph of the SavedModel at `path`."""
  from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-import-not-at-top
  saved_model = saved_model_pb2.SavedModel()
  with open(os.path.join(path, "saved_model.pb"), "rb") as f:
    saved_model.ParseFromString(f.read())
  return [meta_graph.graph_def for meta_graph in saved_model.meta_graphs]


def graph_ops(path):
  """Names of every op in the SavedModel's graphs, functions included."""
  ops = set()
  for graph_def in _graph_defs(path):
    ops.update(node.op for node in graph_def.node)
    for function in graph_def.library.function:
      ops.update(node.op for node in function.node_def)
  return ops


XLA_MUST_COMPILE = "_XlaMustCompile"


def xla_must_compile(path):
  """What in the SavedModel must run under XLA (`_XlaMustCompile=True`, what a
  `tf.function(jit_compile=True)` is saved with): names of such functions and of the nodes
  (calls included, in the graph or inside any function) carrying it; sorted, [] when none.

  A model server without XLA for its device cannot run these (see docs/serving.md, XLA)."""
  marked = set()
  for graph_def in _graph_defs(path):
    nodes = [("", node) for node in graph_def.node]
    for function in graph_def.library.function:
      if XLA_MUST_COMPILE in function.attr and function.attr[XLA_MUST_COMPILE].b:
        marked.add(function.signature.name)
      nodes.extend((function.signature.name + "/", node) for node in function.node_def)
    marked.update(scope + node.name for scope, node in nodes
                  if XLA_MUST_COMPILE in node.attr and node.attr[XLA_MUST_COMPILE].b)
  return sorted(marked)


def classify_ops(path):
  """`{"core": [...], "text": [...], "other": [...]}`; call before TF-Text is loaded."""
  from tensorflow.python.framework import op_def_registry  # pylint: disable=g-import-not-at-top
  ops = graph_ops(path)
  core = {op for op in ops if op_def_registry.get(op) is not None and op not in PYTHON_OPS}
  for library in text_op_libraries():
    tf.load_op_library(library)
  text = {op for op in ops - core if op_def_registry.get(op) is not None
          and op not in PYTHON_OPS}
  return {"core": sorted(core), "text": sorted(text), "other": sorted(ops - core - text)}


def load_text_ops():
  for library in text_op_libraries():
    tf.load_op_library(library)


def _call(function, inputs):
  tensors = {name: tf.constant(value) for name, value in inputs.items()}
  return {name: value.numpy() for name, value in function(**tensors).items()}


def run(request):
  result = {}
  if request.get("list_ops"):
    result["ops"] = classify_ops(request["path"])
  load_text_ops()
  loaded = tf.saved_model.load(request["path"])
  result["signatures"] = sorted(loaded.signatures.keys())
  outputs = []
  for signature, inputs in request.get("calls", []):
    try:
      outputs.append(_call(loaded.signatures[signature], inputs))
    except Exception as error:  # pylint: disable=broad-except
      outputs.append(f"{type(error).__name__}: {str(error).strip().splitlines()[0]}")
  result["outputs"] = outputs
  latency = {}
  for label, signature, inputs, iterations in request.get("latency", []):
    function = loaded.signatures[signature]
    _call(function, inputs)
    times = []
    for _ in range(iterations):
      start = time.perf_counter()
      _call(function, inputs)
      times.append(time.perf_counter() - start)
    latency[label] = sorted(times)
  result["latency"] = latency
  result["modules"] = sorted({name.split(".")[0] for name, module in sys.modules.items()
                              if module is not None})
  return result


def saved_model_cli(args):
  """`saved_model_cli ARGS` with TF-Text's ops registered (the stock command lacks them, so
  its `run` fails with `Op type not registered 'RegexSplitWithOffsets'`)."""
  from tensorflow.python.tools import saved_model_cli as cli  # pylint: disable=g-import-not-at-top
  load_text_ops()
  sys.argv = ["saved_model_cli"] + list(args)
  return cli.main()


def main(argv):
  _import_tensorflow()
  if len(argv) > 1 and argv[1] == "saved_model_cli":
    return saved_model_cli(argv[2:])
  if len(argv) != 3:
    print("usage: tf_only.py REQUEST.pkl RESULT.pkl | tf_only.py saved_model_cli ARGS...",
          file=sys.stderr)
    return 2
  with open(argv[1], "rb") as f:
    request = pickle.load(f)
  result = run(request)
  with open(argv[2], "wb") as f:
    pickle.dump(result, f)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
