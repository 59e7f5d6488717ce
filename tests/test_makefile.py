"""`make test` sets up what the tests need: headless Chromium from apt where it can, one clear line where not.

The Makefile's `browser` target runs with PATH holding only fake `id`, `sudo`, `apt-get` (that record their
calls and "install" a fake chromium), so nothing is installed on this machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="make is not installed")


def fake_bin(root: Path, *, uid: int, apt_works: bool, sudo: bool = False) -> Path:
    """A PATH folder of fake tools; apt-get logs its arguments and, when it works, installs a fake chromium."""
    bin_dir = root / "bin"
    bin_dir.mkdir()
    os.symlink(shutil.which("env"), bin_dir / "env")
    install = f'[ "$1" = install ] && printf "#!/bin/sh\\n" > {bin_dir}/chromium && /bin/chmod +x {bin_dir}/chromium'
    tools = {
        "id": f"echo {uid}",
        "apt-get": f'echo "$@" >> {root}/apt.log\n' + (install if apt_works else "exit 100") + "\nexit 0",
        "sudo": '[ "$1" = -n ] && shift; ' + ('"$@"' if sudo else "exit 1"),
    }
    for name, body in tools.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir


def make_browser(root: Path, bin_dir: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([MAKE, "--no-print-directory", "-C", str(REPO), "browser"], capture_output=True, text=True,
                          timeout=30, env={"PATH": str(bin_dir), "TMPDIR": str(root), **env})


def apt_calls(root: Path) -> list[str]:
    log = root / "apt.log"
    return log.read_text().splitlines() if log.is_file() else []


@pytest.mark.parametrize("uid, sudo", [(0, False), (1000, True)])
def test_installs_chromium_with_apt_once(tmp_path, uid, sudo):
    bin_dir = fake_bin(tmp_path, uid=uid, apt_works=True, sudo=sudo)
    first = make_browser(tmp_path, bin_dir)
    assert first.returncode == 0, first.stderr
    assert apt_calls(tmp_path) == ["update", "install -y --no-install-recommends chromium"]
    again = make_browser(tmp_path, bin_dir)  # idempotent: chromium is there now
    assert again.returncode == 0 and len(apt_calls(tmp_path)) == 2 and again.stdout == ""


@pytest.mark.parametrize("uid, apt_works, says", [
    (1000, True, "cannot be installed here (needs apt-get and root)"),  # no root, no passwordless sudo
    (0, False, "apt-get could not install chromium"),  # offline, or no such package
])
def test_cannot_install_is_one_clear_line(tmp_path, uid, apt_works, says):
    done = make_browser(tmp_path, fake_bin(tmp_path, uid=uid, apt_works=apt_works))
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if not line.startswith("make: ***")]
    assert len(ours) == 1 and says in ours[0] and "ALIGNKIT_SKIP_BROWSER=1" in ours[0], done.stderr
    assert not (tmp_path / "bin" / "chromium").exists()


def test_skip_browser_asks_for_nothing(tmp_path):
    done = make_browser(tmp_path, fake_bin(tmp_path, uid=1000, apt_works=True), ALIGNKIT_SKIP_BROWSER="1")
    assert done.returncode == 0 and apt_calls(tmp_path) == []
