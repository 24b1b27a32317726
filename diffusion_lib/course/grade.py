"""Grade a class's notebooks: one CSV row per submission, scored by the course's own checks.

    python -m diffusion_lib.course grade collected/*.ipynb --out grades.csv [--points points.json]

Each submission runs in a fresh kernel without network (`sandbox.py`), with a time limit per cell and per
notebook. Only what the answers need is run (`submission.cells_to_run`): the solution cells, found by their
`exercise:ID` tags, and the cells that define the names they use. Then, for each checked exercise, the
grader executes its own snippet in the kernel: it imports `diffusion_lib` afresh (dropping the modules the
learner's cells may have changed), calls `exercises.CHECKS[id]` on the learner's objects (the names the
*instructor* edition's check cell passes) and sends back whether the check returned True, with a marker
drawn for this run. What the notebook printed, and its own check cells, are never read.

Points come from one table: by kind (implement 2, predict 1) or by exercise id; open questions are
"manual", listed with where their rubric is. A submission that is not a notebook, crashes, or runs past
its limit gets its row and a reason; the others are graded all the same.
"""

from __future__ import annotations

import ast
import csv
import json
import secrets
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import jupytext
import nbformat

from .catalogue import Exercise, course_exercises, exercise_id
from .sandbox import Sandbox, kernel_env
from .submission import cells_to_run, flags

POINTS = {"implement": 2, "predict": 1, "open": "manual"}


@dataclass
class Limits:
    cell_s: float = 60.0        # one cell, or one check call
    notebook_s: float = 300.0   # everything run for one submission, kernel start included
    fast: bool = True           # run the setup cells in the course's fast mode


@dataclass
class Row:
    path: str
    chapter: str = ""
    points: dict[str, float] = field(default_factory=dict)  # exercise id -> points earned
    max: float = 0.0
    reason: str = ""                                        # why a submission was not (fully) graded
    hints: dict[str, str] = field(default_factory=dict)     # exercise id -> the check's hint, when it failed
    flags: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(self.points.values())


def is_checked(exercise: Exercise, table: dict) -> bool:
    """Whether the grader scores the exercise: a check exists and the table gives it a number of points."""
    return exercise.kind != "open" and not isinstance(points_of(exercise, table), str)


def points_of(exercise: Exercise, table: dict) -> float | str:
    """An exercise's points: the table's entry for its id, else for its kind."""
    return table.get(exercise.id, table.get(exercise.kind, 0))


def check_snippet(marker: str, ident: str, names: tuple[str, ...]) -> str:
    """Code the grader runs in the learner's kernel: a fresh import of the checks, one check, one marked reply."""
    return f'''
def _grade_one():
    import contextlib, importlib, io, sys
    for module in [m for m in sys.modules if m == "diffusion_lib" or m.startswith("diffusion_lib.")]:
        del sys.modules[module]  # the learner's cells may have changed these: import the course afresh
    check = importlib.import_module("diffusion_lib.course.exercises").CHECKS[{ident!r}]
    namespace = globals()
    missing = [name for name in {names!r} if name not in namespace]
    printed, passed = io.StringIO(), False
    with contextlib.redirect_stdout(printed):
        if missing:
            print("NOT YET: not defined: " + ", ".join(missing))
        else:
            try:
                passed = check(*[namespace[name] for name in {names!r}]) is True
            except Exception as error:
                print(f"NOT YET: the check raised {{type(error).__name__}}: {{error}}")
    sys.stdout.write("{marker}" + ("1" if passed else "0") + repr(printed.getvalue()[-400:]) + "\\n")
_grade_one()
del _grade_one
'''


def read_reply(marker: str, printed: str) -> tuple[bool, str] | None:
    """(passed, the check's printed text) from the snippet's marked line, or None if there is none."""
    for line in printed.splitlines():
        if line.startswith(marker):
            text = ast.literal_eval(line[len(marker) + 1:])
            return line[len(marker)] == "1", text if isinstance(text, str) else ""
    return None


def read_submission(path: Path):
    """The submission as a notebook, or ValueError saying why it is not one."""
    try:
        notebook = (nbformat.read(path, as_version=4) if path.suffix == ".ipynb" else jupytext.read(path))
    except Exception as error:  # noqa: BLE001 - anything unreadable is "not a notebook"
        raise ValueError(f"not a notebook ({type(error).__name__}: {str(error)[:120]})") from error
    if not getattr(notebook, "cells", None):
        raise ValueError("not a notebook (no cells)")
    return notebook


def _hint(printed: str) -> str:
    text = printed.strip().splitlines()
    return (text[-1] if text else "no message").removeprefix("NOT YET: ")[:200]


def _solution_cells(notebook, course: dict[str, Exercise]) -> dict[str, int]:
    found = {}
    for index, cell in enumerate(notebook.cells):
        ident = exercise_id(cell)
        if cell.cell_type == "code" and ident in course and ident not in found:
            found[ident] = index
    return found


def chapter_of(found: dict[str, int], course: dict[str, Exercise]) -> str:
    """The chapter most of the submission's exercise ids belong to."""
    return Counter(course[ident].chapter for ident in found).most_common(1)[0][0]


def grade_notebook(path, course: dict[str, Exercise], table: dict, limits: Limits, course_sources: set[str]) -> Row:
    """One submission's row (see the module docstring); never raises for a bad submission."""
    row = Row(str(path))
    try:
        notebook = read_submission(Path(path))
    except ValueError as error:
        row.reason = str(error)
        return row
    found = _solution_cells(notebook, course)
    if not found:
        row.reason = "no exercise of the course found (no cell tagged exercise:ID): not a chapter of the course?"
        return row
    row.chapter = chapter_of(found, course)
    checked = [e for e in course.values() if e.chapter == row.chapter and is_checked(e, table)]
    row.points = {e.id: 0 for e in checked}
    row.max = sum(points_of(e, table) for e in checked)
    row.flags = flags(notebook.cells, course_sources, {e.id for e in checked if e.kind == "implement"})
    run_checks(notebook, [e for e in checked if e.id in found], found, table, limits, row)
    missing = [e.id for e in checked if e.id not in found]
    if missing:
        row.reason = "; ".join(filter(None, [row.reason, f"answer cells missing: {', '.join(missing)}"]))
    return row


def run_checks(notebook, exercises: list[Exercise], found: dict[str, int], table, limits: Limits, row: Row) -> None:
    """Run the needed cells in a fresh kernel, then each check from the grader's side; fill `row`."""
    deadline = time.monotonic() + limits.notebook_s
    with tempfile.TemporaryDirectory(prefix="grade-") as cwd:
        sandbox = None
        try:
            sandbox = Sandbox(cwd, kernel_env(limits.fast))
            for index in cells_to_run(notebook.cells, [found[e.id] for e in exercises]):
                status, printed = sandbox.run(notebook.cells[index].source, _left(deadline, limits))
                if status == "timeout":
                    row.reason = f"cell {index} ran past its time limit (an endless loop?)"
                if not sandbox.alive:
                    return
            for exercise in exercises:
                marker = secrets.token_hex(8)
                status, printed = sandbox.run(check_snippet(marker, exercise.id, exercise.names), _left(deadline, limits))
                reply = read_reply(marker, printed) if status == "ok" else None
                if reply is None:
                    row.hints[exercise.id] = "the check ran past its time limit" if status == "timeout" else \
                        f"the check could not run: {printed.strip()[-160:]}"
                elif reply[0]:
                    row.points[exercise.id] = points_of(exercise, table)
                else:
                    row.hints[exercise.id] = _hint(reply[1])
                if not sandbox.alive:
                    return
        except Exception as error:  # noqa: BLE001 - a kernel that dies or will not start fails this row only
            row.reason = "; ".join(filter(None, [row.reason, f"the kernel failed: {type(error).__name__}: {error}"[:200]]))
        finally:
            if time.monotonic() > deadline and not row.reason:
                row.reason = f"ran past the notebook's time limit of {limits.notebook_s:g} s"
            if sandbox is not None:
                sandbox.close()


def _left(deadline: float, limits: Limits) -> float:
    """The time limit for the next piece of code: the cell limit, or what is left of the notebook's."""
    return max(min(limits.cell_s, deadline - time.monotonic()), 0.1)


def grade(paths, chapters="chapters", table: dict | None = None, limits: Limits | None = None, jobs: int = 2) -> list[Row]:
    """Grade every submission in `paths` against the instructor edition in `chapters`; rows in the order given."""
    course, table, limits = course_exercises(chapters), {**POINTS, **(table or {})}, limits or Limits()
    course_sources = {cell.source for path in Path(chapters).glob("[0-9][0-9]_*.ipynb")
                      for cell in jupytext.read(path).cells if cell.cell_type == "code"}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(lambda p: grade_notebook(p, course, table, limits, course_sources), paths))


def write_csv(rows: list[Row], out: str | Path, course: dict[str, Exercise], table: dict) -> None:
    """One row per submission: a column per checked exercise (its points), total, max, reason, flags."""
    chapters = {row.chapter for row in rows if row.chapter}
    ids = [e.id for e in course.values() if e.chapter in chapters and is_checked(e, table)]
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["notebook", "chapter", *ids, "total", "max", "reason", "flags"])
        for row in rows:
            writer.writerow([row.path, row.chapter, *[_number(row.points.get(i, "")) for i in ids],
                             _number(row.total), _number(row.max), row.reason, "; ".join(row.flags)])


def _number(value):
    return int(value) if isinstance(value, float) and value.is_integer() else value


def summary(rows: list[Row], course: dict[str, Exercise], table: dict) -> str:
    """The class at a glance: per exercise, how many passed and the commonest hint; the manual questions."""
    chapters = sorted({row.chapter for row in rows if row.chapter})
    graded = [row for row in rows if row.chapter]
    lines = [f"graded {len(graded)} of {len(rows)} notebooks"
             + "".join(f"\n  not graded: {row.path}: {row.reason}" for row in rows if not row.chapter)]
    for exercise in [e for e in course.values() if e.chapter in chapters]:
        if not is_checked(exercise, table):
            lines.append(f"{exercise.id} ({exercise.kind}, {points_of(exercise, table)}): grade by hand; rubric in {exercise.rubric}")
            continue
        mine = [row for row in graded if row.chapter == exercise.chapter]
        passed = sum(row.points.get(exercise.id, 0) > 0 for row in mine)
        hints = Counter(row.hints[exercise.id] for row in mine if exercise.id in row.hints)
        common = f"; commonest hint ({hints.most_common(1)[0][1]}x): {hints.most_common(1)[0][0]}" if hints else ""
        lines.append(f"{exercise.id} ({exercise.kind}, {points_of(exercise, table)} pts): passed {passed}/{len(mine)}{common}")
    lines += [f"flagged: {row.path}: {'; '.join(row.flags)}" for row in rows if row.flags]
    lines += [f"note: {row.path}: {row.reason}" for row in rows if row.chapter and row.reason]
    return "\n".join(lines)


def read_points(path: str | Path | None) -> dict:
    """The points table from a JSON file: {"implement": 2, "predict": 1, "ch03-ideal-x0": 4, ...}."""
    if path is None:
        return {}
    table = json.loads(Path(path).read_text(encoding="utf-8"))
    bad = {key: value for key, value in table.items() if not isinstance(value, (int, float)) and value != "manual"} \
        if isinstance(table, dict) else table
    if bad:
        raise ValueError(f"{path}: points must be numbers (or \"manual\"), by kind or exercise id; not {bad}")
    return table
