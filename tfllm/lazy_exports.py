"""Package attributes imported on first use (PEP 562), so a package's TF-free submodules
import where TensorFlow is absent.

`tfllm.config` imports each section's schema module (`tfllm.training.config`, ...), and
importing a submodule runs its package's `__init__` first. The packages whose other modules
need TensorFlow (training, export, finetune) therefore name their public attributes here
instead of importing them: `from tfllm.training import Trainer` still works (it imports
`tfllm.training.loop` then), while `tfllm.training.config` imports with the JAX backend and
no TensorFlow installed (docs/jax.md).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Callable, Dict, Iterable, List, Mapping, Tuple


def lazy_exports(package: str, exports: Mapping[str, Iterable[str]]
                 ) -> Tuple[Callable[[str], object], List[str]]:
  """Returns a package's `__getattr__` and `__all__` for attributes imported on use.

  Besides the names in `exports`, every submodule of `package` is an attribute.

  Args:
    package: the package's `__name__`.
    exports: submodule name (relative to `package`) -> the public names it provides.

  Returns:
    (`__getattr__`, `__all__`): assign them at the package's module level.
  """
  owner: Dict[str, str] = {name: f"{package}.{module}"
                           for module, names in exports.items() for name in names}

  def getattr_(name: str):
    module_name = owner.get(name)
    if module_name is not None:
      return getattr(importlib.import_module(module_name), name)
    # A submodule read as an attribute (`finetune.lora.variable_keys`), as when the package
    # imported it eagerly.
    if not name.startswith("__") and importlib.util.find_spec(f"{package}.{name}") is not None:
      return importlib.import_module(f"{package}.{name}")
    raise AttributeError(f"module {package!r} has no attribute {name!r}")

  return getattr_, sorted(owner)
