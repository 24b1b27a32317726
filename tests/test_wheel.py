"""The wheel that `pip install "diffusion_lib @ git+https://..."` builds must carry every committed file of the package.

Colab installs the library from git, so the chapters load checkpoints and measured figures from the installed wheel,
not from a checkout. A file left out by `[tool.setuptools.package-data]` goes missing silently there (chapter 9 once
showed one progressive-distillation student instead of four). This test builds the wheel the way pip does, offline,
from a temporary copy of the committed files, and compares its contents with `git ls-files diffusion_lib`.
"""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "diffusion_lib"


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)


def _tracked_package_files() -> list[str]:
    """Committed files under diffusion_lib/ that exist in the working tree, as repo-relative POSIX paths."""
    if shutil.which("git") is None:
        pytest.skip("git is not available: cannot list the committed package files")
    if _git("rev-parse", "--is-inside-work-tree").returncode != 0:
        pytest.skip("not a git checkout: cannot list the committed package files")
    listed = _git("ls-files", "-z", "--", PACKAGE)
    assert listed.returncode == 0, listed.stderr
    files = [f for f in listed.stdout.split("\0") if f and (ROOT / f).is_file()]
    if not files:
        pytest.skip(f"no committed files under {PACKAGE}/ in this git checkout")
    return files


def _copy_sources(files: list[str], dest: Path) -> None:
    """The committed package files plus the top-level files a build reads (pyproject.toml, README.md, LICENSE, ...),
    so that the build sees what a fresh clone holds and leaves its build/ and *.egg-info in the copy, not the repo."""
    top = _git("ls-files", "-z", "--", ":(top,glob)*")
    assert top.returncode == 0, top.stderr
    for name in [f for f in top.stdout.split("\0") if f and "/" not in f] + files:
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def test_wheel_holds_every_committed_package_file(tmp_path):
    tracked = _tracked_package_files()
    src, out = tmp_path / "src", tmp_path / "wheel"
    src.mkdir()
    _copy_sources(tracked, src)
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "--no-index",
         "--no-cache-dir", "-w", str(out)],
        capture_output=True, text=True, env=env, cwd=tmp_path)
    assert build.returncode == 0, f"pip wheel failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}"
    wheels = list(out.glob(f"{PACKAGE}-*.whl"))
    assert len(wheels) == 1, f"expected one wheel, got {[w.name for w in out.iterdir()]}"

    with zipfile.ZipFile(wheels[0]) as whl:
        in_wheel = {n for n in whl.namelist() if n.startswith(f"{PACKAGE}/") and not n.endswith("/")
                    and "__pycache__" not in n.split("/")}
    missing = sorted(set(tracked) - in_wheel)
    assert not missing, (f"{len(missing)} committed file(s) under {PACKAGE}/ are not in the wheel; "
                         f"extend [tool.setuptools.package-data] in pyproject.toml:\n" + "\n".join(missing))
