"""The course's exercises, read from the instructor edition: a stable id, a kind and what the check takes.

Each exercise carries an `exercise:ID` tag (cell metadata, kept by both files of a jupytext pair): on its
solution cell for an implement or predict exercise, on the question's markdown cell for an open question.
The id survives the student edition (the stub keeps its tags), so the grader finds a learner's answer
by it, whatever else the learner changed. What the check takes is read from the *instructor* edition's
check cell (the code cell after the solution), never from a submission.

| kind | solution cell | graded by |
| --- | --- | --- |
| implement | defines a function | `exercises.CHECKS[id](the function)` |
| predict | assigns a number | `exercises.CHECKS[id](the number)` |
| open | (a markdown question; its model answer and rubric follow it) | the instructor ("manual") |
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import jupytext

EXERCISE_TAG = "exercise:"
SOLUTION_TAG = "solution"


@dataclass(frozen=True)
class Exercise:
    id: str                 # e.g. "ch02-q-sample"
    chapter: str            # the chapter's file stem, e.g. "02_forward_noising"
    kind: str               # "implement", "predict" or "open"
    names: tuple[str, ...]  # the learner's objects, in the order the check takes them (none for "open")
    rubric: str = ""        # open questions: where the model answer and rubric are


def exercise_id(cell) -> str | None:
    """The id in a cell's `exercise:ID` tag, or None."""
    ids = [tag[len(EXERCISE_TAG):] for tag in cell.get("metadata", {}).get("tags", []) if tag.startswith(EXERCISE_TAG)]
    return ids[0] if ids else None


def check_arguments(check_source: str) -> tuple[str, tuple[str, ...]]:
    """(check function name, the names passed positionally) of the `exercises.check_*(...)` call in a check cell."""
    for node in ast.walk(ast.parse(check_source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr.startswith("check_"):
            return node.func.attr, tuple(arg.id for arg in node.args if isinstance(arg, ast.Name))
    raise ValueError(f"no exercises.check_*(...) call in the check cell: {check_source[:80]!r}")


def chapter_exercises(path: str | Path) -> list[Exercise]:
    """The exercises of one chapter of the instructor edition, in notebook order."""
    path = Path(path)
    cells = jupytext.read(path).cells
    found = []
    for index, cell in enumerate(cells):
        ident = exercise_id(cell)
        if ident is None:
            continue
        if cell.cell_type == "markdown":
            answer = cells[index + 1] if index + 1 < len(cells) else None
            where = (f"chapters/{path.name}, cell {index + 2} (the model answer and rubric, after the question)"
                     if answer is not None and SOLUTION_TAG in answer.metadata.get("tags", []) else "no rubric")
            found.append(Exercise(ident, path.stem, "open", (), where))
            continue
        check = next(c for c in cells[index + 1:] if c.cell_type == "code")
        _, names = check_arguments(check.source)
        defines_function = any(isinstance(node, ast.FunctionDef) for node in ast.parse(cell.source).body)
        found.append(Exercise(ident, path.stem, "implement" if defines_function else "predict", names))
    return found


def course_exercises(chapters: str | Path = "chapters") -> dict[str, Exercise]:
    """Every exercise of the course by id; refuses a repeated id."""
    table = {}
    for path in sorted(Path(chapters).glob("[0-9][0-9]_*.ipynb")):
        for exercise in chapter_exercises(path):
            if exercise.id in table:
                raise ValueError(f"exercise id {exercise.id!r} is used twice ({table[exercise.id].chapter}, {path.stem})")
            table[exercise.id] = exercise
    if not table:
        raise FileNotFoundError(f"no tagged exercises in {chapters}: give the instructor edition's chapters/ folder")
    return table
