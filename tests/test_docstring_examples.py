"""Every public layer and model class of `tfllm.layers` and `tfllm.models` has an `Example:`
section in its docstring, and every `Example:` there (classes, their methods, functions)
runs as written."""

import importlib
import inspect
import pkgutil
import re
import textwrap

import keras
import pytest

import tfllm.layers
import tfllm.models

PACKAGES = (tfllm.layers, tfllm.models)
# An `Example:` heading, then one fenced python block (the code inside, indented as the
# docstring is).
EXAMPLE = re.compile(r"^\s*Example:\s*\n\s*\n?(\s*)```python\n(.*?)\n\s*```", re.M | re.S)


def _modules():
  for package in PACKAGES:
    yield package
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
      yield importlib.import_module(info.name)


def _public_members():
  """(qualified name, object) of every public class, method and function defined in the
  packages' modules."""
  seen = set()
  for module in _modules():
    for name, member in vars(module).items():
      if name.startswith("_") or getattr(member, "__module__", None) != module.__name__:
        continue
      if not (inspect.isclass(member) or inspect.isfunction(member)):
        continue
      qualified = f"{module.__name__}.{name}"
      if qualified in seen:
        continue
      seen.add(qualified)
      yield qualified, member
      if inspect.isclass(member):
        for attribute, method in vars(member).items():
          if inspect.isfunction(method) and not attribute.startswith("_"):
            yield f"{qualified}.{attribute}", method


MEMBERS = dict(_public_members())
LAYER_CLASSES = sorted(name for name, member in MEMBERS.items()
                       if inspect.isclass(member) and issubclass(member, keras.layers.Layer))
WITH_EXAMPLES = sorted(name for name, member in MEMBERS.items()
                       if "Example:" in (member.__doc__ or ""))


@pytest.mark.parametrize("name", LAYER_CLASSES)
def test_public_layer_and_model_classes_have_an_example(name):
  assert EXAMPLE.search(MEMBERS[name].__doc__ or ""), (
      f"{name}: its docstring has no `Example:` section with a ```python block")


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_example_runs(name):
  docstring = MEMBERS[name].__doc__
  match = EXAMPLE.search(docstring)
  assert match, f"{name}: `Example:` without a ```python block"
  code = textwrap.dedent(match.group(1) + match.group(2))
  try:
    exec(compile(code, f"<{name} docstring example>", "exec"), {"__name__": "__example__"})
  except Exception as error:  # pylint: disable=broad-except
    pytest.fail(f"{name}: the docstring example fails: {type(error).__name__}: {error}")
