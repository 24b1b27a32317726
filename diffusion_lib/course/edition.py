"""The student edition of the chapters: every code cell tagged `solution` becomes a stub.

The committed chapters are the instructor edition. In the student edition, a solution cell keeps
each function's name and signature with its body replaced by `# YOUR CODE HERE` and a
`raise NotImplementedError`, and each answer variable becomes `None  # YOUR CODE HERE`; the
check cell that follows then reports "NOT YET" with a hint instead of passing. The outputs
stored for the solution cells and the check cells after them are cleared (they would show the
reference answer passing). A markdown cell tagged `solution`, the model answer and rubric of an
open question, is left out. Every other cell, and its stored output, is unchanged. Both files of
each jupytext pair are written.

Run again into the same folder, it writes only what is missing and never overwrites: a file
already there that differs from the edition (a learner's work) is kept as it is, with the other
file of its chapter pair, so that a pair is never half rewritten; each kept file is reported.
An OUT_DIR that is a file, or in a folder that cannot be written, is refused before anything is
written.

    python -m diffusion_lib.course student-edition OUT_DIR [--chapters chapters]
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass, field
from pathlib import Path

import jupytext

SOLUTION_TAG = "solution"
STUB_MARK = "# YOUR CODE HERE"
PAIR = ((".ipynb", "ipynb"), (".py", "py:percent"))  # the two files of each chapter, in jupytext's formats


def stub_source(source: str) -> str:
    """The student's version of a solution cell: signatures kept, bodies and answers removed."""
    try:
        tree = ast.parse(source)
    except SyntaxError as error:
        raise ValueError(f"a solution cell is not valid Python ({error}); fix it in the instructor edition") from error
    parts = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            docstring = ast.get_docstring(node, clean=False)  # as written, so its lines keep their indentation
            node.body = ([ast.Expr(ast.Constant(docstring))] if docstring else []) + [ast.Pass()]
            header = ast.unparse(node).rsplit("\n", 1)[0]  # the def line (and docstring), without the `pass`
            parts.append(f"{header}\n    {STUB_MARK}\n"
                         f"    raise NotImplementedError(\"write {node.name}, then run the check below\")")
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            parts.append(f"{node.targets[0].id} = None  {STUB_MARK}: your answer")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            continue  # the imports the reference answer needed
        else:
            raise ValueError(f"cannot turn this solution statement into a stub: {ast.unparse(node)[:60]!r}; "
                             "solution cells may hold only functions, simple assignments and imports")
    if not parts:
        raise ValueError("a solution cell defines nothing: it must define a function or an answer variable")
    return "\n\n\n".join(parts) + "\n"


def student_notebook(notebook):
    """A copy of a jupytext/nbformat notebook with its solution cells stubbed (see the module docstring)."""
    notebook = jupytext.reads(jupytext.writes(notebook, "ipynb"), "ipynb")  # a deep copy
    notebook.cells = [cell for cell in notebook.cells  # model answers to open questions: instructors only
                      if not (cell.cell_type == "markdown" and SOLUTION_TAG in cell.metadata.get("tags", []))]
    after_solution = False
    for cell in notebook.cells:
        is_solution = SOLUTION_TAG in cell.metadata.get("tags", [])
        if is_solution:
            cell.source = stub_source(cell.source)
        if cell.cell_type == "code" and (is_solution or after_solution):
            cell.outputs, cell.execution_count = [], None
        if cell.cell_type == "code":
            after_solution = is_solution
    return notebook


@dataclass
class EditionReport:
    """What `write_student_edition` did with each file of the edition in OUT_DIR."""

    written: list[Path] = field(default_factory=list)     # were missing, now written
    up_to_date: list[Path] = field(default_factory=list)  # already there, byte for byte the same
    kept: list[Path] = field(default_factory=list)        # already there and different, or paired with one that is


def check_writable(out_dir: Path) -> None:
    """Refuse an OUT_DIR that is a file, lies under a file, or lies in a folder that cannot be written."""
    existing = out_dir
    while not (existing.exists() or existing.is_symlink()):  # the nearest part of the path already there
        existing = existing.parent
    if not existing.is_dir():
        where = "" if existing == out_dir else f" cannot be created: {existing}"
        raise NotADirectoryError(f"{out_dir}{where} is a file, not a folder: "
                                 "give OUT_DIR as a new folder or an existing one")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write in {existing} (no permission): give an OUT_DIR you can write to, "
                              "or make that folder writable")


def edition_files(chapters: Path, out_dir: Path) -> list[dict[Path, bytes]]:
    """The bytes of every file of the edition, in the units written or kept whole: each chapter's pair, the config."""
    groups = []
    for path in sorted(chapters.glob("[0-9][0-9]_*.ipynb")):
        student = student_notebook(jupytext.read(path))
        texts = {out_dir / path.with_suffix(suffix).name: jupytext.writes(student, fmt=fmt) for suffix, fmt in PAIR}
        groups.append({target: (text if text.endswith("\n") else text + "\n").encode("utf-8")  # as jupytext.write
                       for target, text in texts.items()})
    config = next((d / "jupytext.toml" for d in (chapters, chapters.parent) if (d / "jupytext.toml").exists()), None)
    if config is not None:  # the pairing settings, so that the new folder's pairs stay paired
        groups.append({out_dir / config.name: config.read_bytes()})
    return groups


def write_missing(group: dict[Path, bytes], report: EditionReport) -> None:
    """Write the group's missing files, unless one already there differs: then keep the group's files as they are."""
    existing = {path: path.read_bytes() for path in group if path.exists()}
    if any(content != group[path] for path, content in existing.items()):
        report.kept.extend(existing)
        return
    for path, content in group.items():
        if path in existing:
            report.up_to_date.append(path)
        else:
            path.write_bytes(content)
            report.written.append(path)


def write_student_edition(chapters: str | Path, out_dir: str | Path) -> EditionReport:
    """Write the student edition of every chapter in `chapters` (its .ipynb files) to `out_dir`, .ipynb and .py.

    Never overwrites a file: see the module docstring. Everything is checked and built before the first write.
    """
    chapters, out_dir = Path(chapters), Path(out_dir)
    if not any(chapters.glob("[0-9][0-9]_*.ipynb")):
        raise FileNotFoundError(f"no chapter notebooks (NN_name.ipynb) in {chapters}: give the course's chapters/ folder")
    if out_dir.resolve() == chapters.resolve():
        raise ValueError("OUT_DIR must differ from the chapters folder: the student edition would overwrite the solutions")
    check_writable(out_dir)
    groups = edition_files(chapters, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = EditionReport()
    for group in groups:
        write_missing(group, report)
    return report
