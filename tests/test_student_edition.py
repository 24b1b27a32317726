"""The student edition: generated from the chapters, no solution survives, stubs fail their checks helpfully."""

import ast
import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import jupytext
import numpy as np
import pytest
import torch

import diffusion_lib as dl
from diffusion_lib.course import exercises
from diffusion_lib.course.__main__ import main
from diffusion_lib.course.runner import run_notebook
from diffusion_lib.course.edition import SOLUTION_TAG, STUB_MARK, stub_source, write_student_edition

REPO = Path(__file__).resolve().parent.parent
CHAPTERS = REPO / "chapters"


@pytest.fixture(scope="module")
def edition(tmp_path_factory):
    out = tmp_path_factory.mktemp("student")
    result = subprocess.run([sys.executable, "-m", "diffusion_lib.course", "student-edition", str(out),
                             "--chapters", str(CHAPTERS)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return out


def _exercises(notebook):
    """(solution cell, the code cell after it) pairs."""
    code = [c for c in notebook.cells if c.cell_type == "code"]
    return [(cell, code[i + 1]) for i, cell in enumerate(code) if SOLUTION_TAG in cell.metadata.get("tags", [])]


def _run(cells_source: list[str]) -> str:
    """Execute sources in one namespace (as a kernel would) and return what they printed."""
    namespace = {"dl": dl, "torch": torch, "np": np, "exercises": exercises, "sweep": {"accuracy": [0.12]}}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for source in cells_source:
            exec(source, namespace)
    return printed.getvalue()


def test_every_chapter_has_both_files_paired_and_in_sync(edition):
    for notebook in sorted(CHAPTERS.glob("[0-9][0-9]_*.ipynb")):
        ipynb, py = edition / notebook.name, edition / notebook.with_suffix(".py").name
        assert ipynb.exists() and py.exists()
        a, b = jupytext.read(ipynb), jupytext.read(py)
        assert [c.source.strip() for c in a.cells] == [c.source.strip() for c in b.cells]
        assert a.metadata["kernelspec"]["name"] == "python3"
    assert (edition / "jupytext.toml").exists()


def _docstring_lines(source: str) -> set[str]:
    """The stripped lines of the docstrings of the functions a solution cell defines, quotes included."""
    lines = source.splitlines()
    kept = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and ast.get_docstring(node) is not None:
            first = node.body[0]
            kept.update(line.strip() for line in lines[first.lineno - 1:first.end_lineno])
    return kept


@pytest.mark.parametrize("notebook", sorted(CHAPTERS.glob("[0-9][0-9]_*.ipynb")), ids=lambda p: p.stem)
def test_no_solution_survives_and_everything_else_is_unchanged(edition, notebook):
    teacher, student = jupytext.read(notebook), jupytext.read(edition / notebook.name)
    answers = [c for c in teacher.cells if c.cell_type == "markdown" and SOLUTION_TAG in c.metadata.get("tags", [])]
    teacher.cells = [c for c in teacher.cells if not any(c is a for a in answers)]
    assert len(teacher.cells) == len(student.cells)
    text = "\n".join(c.source for c in student.cells)
    assert not [a for a in answers if a.source.splitlines()[1] in text], f"{notebook.stem}: a model answer left in"
    for old, new in zip(teacher.cells, student.cells):
        if SOLUTION_TAG in old.metadata.get("tags", []):
            assert STUB_MARK in new.source and not new.get("outputs")
            kept = _docstring_lines(old.source)  # the stub keeps each function's docstring: it is the specification
            body = [line.strip() for line in old.source.splitlines()
                    if line.strip() and not line.lstrip().startswith(("def ", "import ", "from ", "#"))
                    and line.strip() not in kept]
            leaked = [line for line in body if line in text]
            assert not leaked, f"{notebook.stem}: solution lines left in the student edition: {leaked}"
        else:
            assert new.source == old.source
    kept = [c for c in student.cells if c.cell_type == "code" and c.get("outputs")]
    assert len(kept) >= len([c for c in teacher.cells if c.cell_type == "code" and c.get("outputs")]) - 2 * len(_exercises(teacher))


@pytest.mark.parametrize("notebook", sorted(CHAPTERS.glob("[0-9][0-9]_*.ipynb")), ids=lambda p: p.stem)
def test_every_open_question_has_a_model_answer_and_rubric_for_instructors_only(edition, notebook):
    teacher, student = jupytext.read(notebook), jupytext.read(edition / notebook.name)
    questions = [i for i, c in enumerate(teacher.cells) if c.cell_type == "markdown" and "(open" in c.source]
    assert questions, f"{notebook.stem} has no open question"
    for i in questions:
        answer = teacher.cells[i + 1]
        assert answer.cell_type == "markdown" and SOLUTION_TAG in answer.metadata.get("tags", []), \
            f"{notebook.stem}: the cell after an open question is not its model answer (a markdown cell tagged solution)"
        assert answer.source.startswith("**Model answer") and "**Rubric" in answer.source
    student_text = "\n".join(c.source for c in student.cells)
    assert "**Model answer" not in student_text and "**Rubric" not in student_text


@pytest.mark.parametrize("notebook", sorted(CHAPTERS.glob("[0-9][0-9]_*.ipynb")), ids=lambda p: p.stem)
def test_stubs_fail_their_checks_with_a_hint_and_references_pass(edition, notebook):
    teacher, student = jupytext.read(notebook), jupytext.read(edition / notebook.name)
    pairs = list(zip(_exercises(teacher), _exercises(student)))
    assert len(pairs) >= 2
    for (solution, check), (stub, student_check) in pairs:
        assert check.source == student_check.source and "exercises.check_" in check.source
        assert _run([solution.source, check.source]).startswith("PASS"), f"{notebook.stem}: reference fails {check.source}"
        printed = _run([stub.source, check.source])
        assert printed.startswith("NOT YET: ") and len(printed) > len("NOT YET: ") + 20, printed


def test_stub_source_keeps_signatures_and_refuses_what_it_cannot_stub():
    stub = stub_source('import torch\n\n\ndef f(a, b=2):\n    """Doc."""\n    return a + b\n\n\nanswer = 3\n')
    assert "def f(a, b=2):" in stub and "Doc." in stub and "return" not in stub and "answer = None" in stub
    with pytest.raises(NotImplementedError):
        exec(stub, {})["f"] if False else exec(stub + "\nf(1)\n", {})
    with pytest.raises(ValueError, match="cannot turn"):
        stub_source("for i in range(3):\n    print(i)\n")
    with pytest.raises(ValueError, match="defines nothing"):
        stub_source("import torch\n")


def test_refuses_to_overwrite_the_chapters_and_names_a_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="overwrite"):
        write_student_edition(CHAPTERS, CHAPTERS)
    with pytest.raises(FileNotFoundError, match="chapters/ folder"):
        write_student_edition(tmp_path, tmp_path / "out")


def test_a_rerun_writes_only_what_is_missing_and_keeps_every_learners_file_byte_for_byte(tmp_path, capsys):
    out = tmp_path / "student"
    assert main(["student-edition", str(out), "--chapters", str(CHAPTERS)]) == 0
    first = {path.name: path.read_bytes() for path in out.iterdir()}
    notebook = jupytext.read(out / "02_forward_noising.ipynb")  # a learner answers in Jupyter, then deletes the .py
    notebook.cells[0].source += "\n\nmy notes"
    jupytext.write(notebook, out / "02_forward_noising.ipynb")
    (out / "02_forward_noising.py").unlink()
    (out / "03_noise_prediction.py").write_text(first["03_noise_prediction.py"].decode() + "x = 1  # my answer\n")
    (out / "05_ddim.py").unlink()  # its .ipynb is untouched: the pair is rewritten whole
    (out / "jupytext.toml").write_text("# my settings\n")
    edited = {path.name: path.read_bytes() for path in out.iterdir()}
    capsys.readouterr()
    assert main(["student-edition", str(out), "--chapters", str(CHAPTERS)]) == 0
    printed = capsys.readouterr().out
    assert {path.name: path.read_bytes() for path in out.iterdir() if path.name != "05_ddim.py"} == edited
    assert not (out / "02_forward_noising.py").exists(), "half a pair written next to a learner's notebook"
    assert (out / "05_ddim.py").read_bytes() == first["05_ddim.py"]
    kept = ["02_forward_noising.ipynb", "03_noise_prediction.ipynb", "03_noise_prediction.py", "jupytext.toml"]
    assert f"files written 1, already up to date {len(first) - 2 - len(kept)}, kept as they are {len(kept)}" in printed
    assert f"(a learner's work?): {', '.join(kept)}\n" in printed


def test_a_rerun_over_an_untouched_edition_writes_nothing(edition, capsys):
    before = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in edition.iterdir()}
    assert main(["student-edition", str(edition), "--chapters", str(CHAPTERS)]) == 0
    assert f"files written 0, already up to date {len(before)}, kept as they are 0" in capsys.readouterr().out
    assert {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in edition.iterdir()} == before


def _refused(argv, capsys) -> str:
    """The one-line error that `main` gives for argv (exit 2)."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("python -m diffusion_lib.course: error: "), err
    return err


def test_a_file_as_out_dir_is_refused_in_one_line_without_a_traceback(tmp_path, capsys):
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    result = subprocess.run([sys.executable, "-m", "diffusion_lib.course", "student-edition", str(afile),
                             "--chapters", str(CHAPTERS)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "Traceback" not in result.stderr and result.stderr.count("\n") == 1
    assert f"{afile} is a file, not a folder: give OUT_DIR as a new folder" in result.stderr
    err = _refused(["student-edition", str(afile / "student"), "--chapters", str(CHAPTERS)], capsys)
    assert f"{afile / 'student'} cannot be created: {afile} is a file" in err
    assert afile.read_text() == "mine"


def test_a_read_only_out_dir_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    locked, access = tmp_path / "locked", os.access
    locked.mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != locked and access(path, mode, **kw))
    for out in (locked, locked / "student"):
        err = _refused(["student-edition", str(out), "--chapters", str(CHAPTERS)], capsys)
        assert f"cannot write in {locked} (no permission): give an OUT_DIR you can write to" in err
    assert not any(locked.iterdir())


def test_a_folder_made_read_only_with_chmod_is_refused(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("this user (root?) may write in a mode-555 folder; the monkeypatched test above covers it")
        err = _refused(["student-edition", str(locked), "--chapters", str(CHAPTERS)], capsys)
        assert "cannot write in" in err and not any(locked.iterdir())
    finally:
        locked.chmod(0o755)


@pytest.mark.slow
def test_a_student_chapter_runs_to_the_end_with_every_check_saying_not_yet(edition):
    """Run All on the student edition of chapter 2 (fast mode): no error, and each check reports NOT YET."""
    notebook = edition / "02_forward_noising.ipynb"
    printed = run_notebook(notebook, fast=True, timeout=300)  # raises on a failing cell
    cells = jupytext.read(notebook).cells
    checks = [i for i, cell in enumerate(cells) if cell.cell_type == "code" and "exercises.check_" in cell.source]
    assert len(checks) >= 2
    for index in checks:
        assert printed[index].startswith("NOT YET: "), printed[index]


def test_the_committed_student_edition_is_the_generated_one(edition):
    """student/ (what the README's Colab and Binder links open) holds exactly what the command writes today.
    After changing a chapter: `rm -r student && python -m diffusion_lib.course student-edition student`."""
    committed = REPO / "student"
    assert committed.is_dir(), "no student/ folder: python -m diffusion_lib.course student-edition student"
    generated = {path.name: path.read_bytes() for path in edition.iterdir()}
    assert sorted(path.name for path in committed.iterdir()) == sorted(generated)
    stale = [name for name, content in generated.items() if (committed / name).read_bytes() != content]
    assert not stale, f"student/ is out of date with chapters/ ({stale}): rm -r student, then regenerate it"


def test_the_readmes_learner_links_open_the_student_edition():
    import re

    readme = (REPO / "README.md").read_text()
    colab = re.findall(r"colab\.research\.google\.com/github/[^/]+/[^/]+/blob/main/([^)]+\.ipynb)", readme)
    binder = re.findall(r"mybinder\.org/v2/gh/[^)]*urlpath=lab/tree/([^)&]+)", readme)
    assert len(colab) == len(list(CHAPTERS.glob("[0-9][0-9]_*.ipynb"))) and binder
    for link in colab + binder:
        assert link.startswith("student/") and (REPO / link).exists(), link
