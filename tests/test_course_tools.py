"""Instructor tools: teaching from a fork (every link names `course.fork.REPOSITORY`; `repoint` moves them all),
and the estimate of a learner's time per chapter."""

import json
import re
import shutil
from pathlib import Path

import jupytext
import pytest

from diffusion_lib.course import fork, timing
from diffusion_lib.course.__main__ import main

ROOT = Path(__file__).resolve().parent.parent


def test_every_link_names_the_course_repository():
    found = fork.links(ROOT)
    kinds = {prefix for prefix in ("git+https://github.com/", "colab.research.google.com/github/", "mybinder.org/v2/gh/")
             if any(prefix in path.read_text() for path, _ in found)}
    assert len(kinds) == 3, f"expected pip, Colab and Binder links, found {kinds}"
    chapters = sorted(ROOT.glob("chapters/*.ipynb"))
    assert {path for path, _ in found} >= {*chapters, *(p.with_suffix(".py") for p in chapters), ROOT / "README.md"}
    stale = [(str(path.relative_to(ROOT)), repo) for path, repo in found if repo != fork.REPOSITORY]
    assert not stale, f"links to another repository than {fork.REPOSITORY}: {stale}"


@pytest.fixture
def checkout(tmp_path):
    """The files `repoint` touches, copied into a scratch checkout."""
    for path in [*fork.linked_files(ROOT), ROOT / fork.MODULE]:
        target = tmp_path / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    return tmp_path


def test_repoint_moves_every_link_and_the_constant_and_nothing_else(checkout):
    before = {path: path.read_text() for path in fork.linked_files(checkout)}
    assert main(["repoint", "alice/my-course", "--root", str(checkout)]) == 0
    assert {repo for _, repo in fork.links(checkout)} == {"alice/my-course"}
    assert len(fork.links(checkout)) == len(fork.links(ROOT))
    assert 'REPOSITORY = "alice/my-course"' in (checkout / fork.MODULE).read_text()
    for path, text in before.items():  # only the addresses changed: outputs, cells and pairs untouched
        assert path.read_text().replace("alice/my-course", fork.REPOSITORY) == text
    notebook = checkout / "chapters" / "05_ddim.ipynb"
    json.loads(notebook.read_text())
    paired = jupytext.read(notebook.with_suffix(".py"))
    assert [c.source for c in jupytext.read(notebook).cells] == [c.source for c in paired.cells]


def test_repoint_refuses_a_bad_name_and_changes_nothing(checkout, capsys):
    before = {path: path.read_text() for path in fork.linked_files(checkout)}
    assert main(["repoint", "https://github.com/alice/my-course", "--root", str(checkout)]) == 2
    assert "OWNER/NAME" in capsys.readouterr().err
    assert all(path.read_text() == text for path, text in before.items())


def test_learner_minutes_counts_each_part_at_its_stated_rate(tmp_path):
    words = " ".join(["word"] * 233)
    text = (f"# %% [markdown]\n# {words}\n\n"  # 233 words + the exercise headers' 3 + 4 = 240: two minutes
            "# %%\n" + "".join(f"x{i} = {i}\n" for i in range(15)) + "# a comment\nwidgets.interact(f, a=1)\n\n"
            "# %% [markdown]\n# **Exercise 1 (implement).**\n\n"
            "# %% [markdown]\n# **Exercise 2 (open question).**\n\n"
            "# %% [markdown] tags=[\"solution\"]\n# " + " ".join(["answer"] * 1000) + "\n")
    path = tmp_path / "chapter.py"
    path.write_text(text)
    m = timing.learner_minutes(path, run_seconds=90)
    assert m["reading"] == pytest.approx(240 / timing.WORDS_PER_MINUTE)  # the model answer is not read
    assert m["code"] == pytest.approx(16 / timing.CODE_LINES_PER_MINUTE)  # comments are not counted
    assert m["widgets"] == timing.MINUTES_PER_WIDGET
    assert m["exercises"] == timing.EXERCISE_MINUTES["implement"] + timing.EXERCISE_MINUTES["open"]
    assert m["running"] == 1.5 and m["exercise_count"] == 2
    assert m["total"] == pytest.approx(sum(m[k] for k in ("reading", "code", "widgets", "exercises", "running")))


def test_every_chapter_exercise_is_of_a_kind_the_estimate_knows():
    for notebook in sorted(ROOT.glob("chapters/*.ipynb")):
        headers = [h for c in jupytext.read(notebook).cells if c.cell_type == "markdown"
                   for h in re.findall(r"\*\*Exercise \d+ \(", c.source)]
        assert headers and timing.learner_minutes(notebook)["exercise_count"] == len(headers), notebook.stem
