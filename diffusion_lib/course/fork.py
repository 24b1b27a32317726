"""The course's repository address, held here, and the command that re-points every link to a fork.

The address appears in three kinds of link: each chapter's Colab setup cell installs the library
with `pip install "diffusion_lib @ git+https://github.com/OWNER/NAME"`, the README's badges open
`colab.research.google.com/github/OWNER/NAME/...` and `mybinder.org/v2/gh/OWNER/NAME/...`, and
INSTRUCTORS.md quotes the first. `REPOSITORY` below is the one address they must all name;
`tests/test_fork.py` checks that they do.

    python -m diffusion_lib.course repoint OWNER/NAME     # teach from your fork

rewrites every such link (both files of each chapter pair, in `chapters/` and the student edition `student/`,
the README, INSTRUCTORS.md) and
`REPOSITORY` itself, and changes nothing else.
"""

from __future__ import annotations

import re
from pathlib import Path

REPOSITORY = "diffusion-course/diffusion-course"

# The link kinds that name the course's own repository; each is followed by OWNER/NAME.
LINK = re.compile(r"(?P<prefix>git\+https://github\.com/|colab\.research\.google\.com/github/|mybinder\.org/v2/gh/)"
                  r"(?P<repo>[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)")
# GitHub's rules: an owner is 1-39 letters, digits or hyphens, not starting with a hyphen; a repository
# name is 1-100 letters, digits, ".", "_" or "-", and not only dots (".", "..").
VALID_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,38}/(?!\.+\Z)[A-Za-z0-9_.-]{1,100}")
NAME_RULES = ("OWNER is 1-39 letters, digits or hyphens, not starting with a hyphen; "
              "NAME is 1-100 letters, digits, '.', '_' or '-', not only dots")
MODULE = Path("diffusion_lib", "course", "fork.py")  # this file, relative to the repository root


def linked_files(root: str | Path) -> list[Path]:
    """The files of a course checkout that carry links to its repository."""
    root = Path(root)
    files = [root / "README.md", root / "INSTRUCTORS.md"]
    for folder in ("chapters", "student"):  # the instructor edition and the committed student edition
        files += [*sorted((root / folder).glob("*.py")), *sorted((root / folder).glob("*.ipynb"))]
    return [path for path in files if path.exists()]


def links(root: str | Path) -> list[tuple[Path, str]]:
    """(file, OWNER/NAME) for every link to the course's repository under `root`."""
    return [(path, match["repo"]) for path in linked_files(root) for match in LINK.finditer(path.read_text())]


def repoint(root: str | Path, repository: str) -> dict[Path, int]:
    """Point every link under `root`, and `REPOSITORY` in root's copy of this file, at `repository`.

    Returns the number of changes per file changed.
    """
    if not VALID_NAME.fullmatch(repository):
        shown = repr(repository) if len(repository) <= 80 else f"{repository[:60]!r}... ({len(repository)} characters)"
        raise ValueError(f"{shown} is not a GitHub repository name: give OWNER/NAME, e.g. alice/diffusion-course "
                         f"({NAME_RULES})")
    if not (Path(root) / "chapters").is_dir():
        raise FileNotFoundError(f"{root} has no chapters/ folder: run this from the course's repository root, or pass --root")
    changed = {}
    for path in linked_files(root):
        text = path.read_text()
        new, count = LINK.subn(lambda m: m["prefix"] + repository, text)
        if new != text:
            path.write_text(new)
            changed[path] = count
    module = Path(root) / MODULE
    if not module.exists():
        return changed
    text = module.read_text()
    new = re.sub(r'^REPOSITORY = ".*"$', f'REPOSITORY = "{repository}"', text, count=1, flags=re.M)
    if new != text:
        module.write_text(new)
        changed[module] = 1
    return changed
