"""bitsandbytes is imported with `kernels` hidden, whoever imports it first (no Hub kernel download)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, path: list[Path]) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in path)}
    done = subprocess.run([sys.executable, "-c", code], cwd=path[0], capture_output=True, text=True, timeout=120,
                          env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.fixture
def fake_packages(tmp_path: Path) -> Path:
    """A bitsandbytes that records whether `kernels` imported, and a kernels that would go online."""
    (tmp_path / "bitsandbytes").mkdir()
    (tmp_path / "bitsandbytes" / "__init__.py").write_text(
        "try:\n    from kernels import get_kernel\n    SAW_KERNELS = True\nexcept ImportError:\n    SAW_KERNELS = False\n"
        "from bitsandbytes import functional\n")
    (tmp_path / "bitsandbytes" / "functional.py").write_text("X = 1\n")
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("def get_kernel(*a, **k):\n    raise RuntimeError('online')\n")
    return tmp_path


def test_bitsandbytes_imported_after_alignkit_does_not_see_kernels(fake_packages):
    check = ("import sys, importlib.util, kernels\n{first}\n"
             "assert importlib.util.find_spec('bitsandbytes') is not None\n"  # a probe (as transformers does) is harmless
             "import bitsandbytes\n"
             "print(bitsandbytes.SAW_KERNELS, sys.modules['kernels'] is kernels, bitsandbytes.functional.X)\n")
    path = [fake_packages, REPO / "src"]
    assert _python(check.format(first=""), path) == ["True", "True", "1"]  # the fake works: unguarded, it sees kernels
    assert _python(check.format(first="import alignkit"), path) == ["False", "True", "1"]


def test_the_installed_bitsandbytes_loads_through_the_guard_via_transformers():
    """transformers >= 5.25 imports PEFT (and so bitsandbytes) in `from transformers import set_seed`."""
    pytest.importorskip("bitsandbytes")
    code = ("import sys, alignkit\nfrom transformers import set_seed\nimport bitsandbytes\n"
            "print(type(bitsandbytes.__spec__.loader).__name__)\n")
    assert _python(code, [REPO / "src"]) == ["_LoaderWithoutKernels"]
