"""Keep bitsandbytes from fetching code from the Hub when it is imported.

bitsandbytes >= 0.50 on a CPU with AVX512-BF16 asks the Hub for a CPU kernel (kernels-community) while it
imports: a network call that carries the user's token, for code no recipe asked for (alignkit runs remote
code only with trust_remote_code). Who imports it first varies: PEFT, and since transformers 5.25 even
`from transformers import set_seed` (its trainer_utils imports PEFT). So instead of importing bitsandbytes
early (which would also import torch, slowing commands that never need it), `alignkit` installs an import
hook when it is imported: whenever bitsandbytes is imported afterwards, `kernels` is hidden for the length of
that import and bitsandbytes keeps its built-in kernels.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
from types import ModuleType

GUARDED = "bitsandbytes"
HIDDEN = "kernels"
_QUIET_LOGGER = "bitsandbytes.backends.cpu.ops"  # its "failed to load ... from kernels-community" is expected


class _LoaderWithoutKernels(importlib.abc.Loader):
    """Runs the wrapped loader with `import kernels` failing; everything else is the wrapped loader's."""

    def __init__(self, inner: importlib.abc.Loader) -> None:
        self.inner = inner

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        missing = object()
        saved = sys.modules.get(HIDDEN, missing)
        sys.modules[HIDDEN] = None  # type: ignore[assignment]  # `import kernels` raises ImportError
        quiet = logging.getLogger(_QUIET_LOGGER)
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            self.inner.exec_module(module)
        finally:
            quiet.setLevel(level)
            if saved is missing:
                sys.modules.pop(HIDDEN, None)
            else:
                sys.modules[HIDDEN] = saved


class _Finder(importlib.abc.MetaPathFinder):
    """Finds bitsandbytes as the other finders do, then wraps its loader."""

    def find_spec(self, name: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        if name != GUARDED:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and not isinstance(spec.loader, _LoaderWithoutKernels):
                    spec.loader = _LoaderWithoutKernels(spec.loader)
                return spec
        return None


def install() -> None:
    """Guard every later import of bitsandbytes in this process (idempotent; too late if already imported)."""
    if GUARDED in sys.modules or any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Finder())
