"""The chapters in nbgrader's source format, for instructors who grade with nbgrader.

    python -m diffusion_lib.course nbgrader-source COURSE_DIR [--chapters chapters]

writes COURSE_DIR/source/NN_name/NN_name.ipynb for every chapter: one nbgrader assignment per chapter.
`nbgrader generate_assignment NN_name` then makes the learners' version, and `nbgrader autograde`
scores submissions with the same points as `python -m diffusion_lib.course grade`:

| course cell | nbgrader cell |
| --- | --- |
| solution cell (implement, predict) | autograded answer: each function's body, or the answer, between `### BEGIN SOLUTION` and `### END SOLUTION` |
| its check cell | autograder test, locked, with the exercise's points: asserts that the course's check, loaded afresh from its file, returns True |
| open question's model answer and rubric | manually graded answer (nbgrader shows "YOUR ANSWER HERE" to learners); points from the table's "open" entry if a number, else 2 |

Every nbgrader `grade_id` is the exercise id (`ch02-q-sample`), with `-answer` for an answer cell.
nbgrader rather than Otter-Grader: our checks already return True or False, which is exactly an nbgrader
test cell (`assert ...`); nbgrader grades open questions by hand in the same notebook (Otter has no
such cell of its own), and it autogrades on the instructor's machine or hub with no Docker image to build.

`poll_in_slices()`, called from `nbgrader_config.py`, stops `nbgrader autograde` from stalling for its whole cell
timeout after a widget cell (see its docstring).
"""

from __future__ import annotations

import ast
from pathlib import Path

import jupytext
import nbformat

from .catalogue import SOLUTION_TAG, chapter_exercises, exercise_id

OPEN_POINTS = 2  # nbgrader needs a number for a manually graded cell
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
TEST = """# Autograder test (locked): the course's own check, loaded afresh from its file, so that redefining it does not help.
import importlib.util as _util, diffusion_lib.course as _course
_spec = _util.spec_from_file_location("diffusion_lib.course._graded_exercises", _course.__path__[0] + "/exercises.py")
_checks = _util.module_from_spec(_spec)
_spec.loader.exec_module(_checks)
assert _checks.CHECKS[{ident!r}]({args}) is True, "NOT YET: see the hint above"
"""


def solution_with_markers(source: str) -> str:
    """A solution cell with nbgrader's markers around each function's body (its signature and docstring stay)."""
    lines = source.rstrip("\n").split("\n")
    tree = ast.parse(source)
    spans = []  # (first line, last line) of each region to hide, 1-based
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            body = node.body[1:] if ast.get_docstring(node) else node.body
            spans.append((body[0].lineno, node.end_lineno, body[0].col_offset))
        elif isinstance(node, ast.Assign):
            spans.append((node.lineno, node.end_lineno, 0))
    for first, last, indent in reversed(spans):
        pad = " " * indent
        lines[last:last] = [pad + END]
        lines[first - 1:first - 1] = [pad + BEGIN]
    return "\n".join(lines) + "\n"


def _nbgrader(cell, grade_id: str, solution: bool, grade: bool, points: float = 0) -> None:
    meta = {"grade": grade, "grade_id": grade_id, "locked": grade and not solution, "schema_version": 3,
            "solution": solution, "task": False}
    if grade:
        meta["points"] = points
    cell.metadata["nbgrader"] = meta


def nbgrader_notebook(path: str | Path, table: dict):
    """The chapter at `path` (instructor edition) in nbgrader's source format; `table` gives the points."""
    notebook = jupytext.read(path)
    exercises = {e.id: e for e in chapter_exercises(path)}
    cells = notebook.cells
    for index, cell in enumerate(cells):
        exercise = exercises.get(exercise_id(cell))
        if exercise is None:
            continue
        points = table.get(exercise.id, table.get(exercise.kind))
        if exercise.kind == "open":
            answer = cells[index + 1]
            _nbgrader(answer, f"{exercise.id}-answer", True, True, points if isinstance(points, (int, float)) else OPEN_POINTS)
            answer.metadata["tags"] = [t for t in answer.metadata.get("tags", []) if t != SOLUTION_TAG]
            continue
        cell.source = solution_with_markers(cell.source)
        _nbgrader(cell, f"{exercise.id}-answer", True, False)
        check = next(c for c in cells[index + 1:] if c.cell_type == "code")
        check.source = TEST.format(ident=exercise.id, args=", ".join(exercise.names))
        check.outputs, check.execution_count = [], None
        _nbgrader(check, exercise.id, False, True, points)
    return notebook


def write_nbgrader_source(chapters: str | Path, course_dir: str | Path, table: dict) -> tuple[list[Path], list[Path]]:
    """COURSE_DIR/source/NN_name/NN_name.ipynb for every chapter: (written, kept). Like the student edition,
    it never overwrites: a notebook already there (an instructor's edit) is kept."""
    paths = sorted(Path(chapters).glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise FileNotFoundError(f"no chapter notebooks (NN_name.ipynb) in {chapters}: give the course's chapters/ folder")
    written, kept = [], []
    for path in paths:
        target = Path(course_dir) / "source" / path.stem / path.name
        if target.exists():
            kept.append(target)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nbgrader_notebook(path, table), target)
        written.append(target)
    return written, kept


def poll_in_slices(slice_s: float = 1.0) -> None:
    """Make jupyter_client's asyncio channels look for a waiting message at least every `slice_s` seconds.

    nbgrader runs notebooks through nbclient, which waits for each cell's reply with one asyncio poll of the shell
    socket for the whole cell timeout. After a cell that opens widgets (chapter 2's noising slider), that poll
    sometimes misses the reply that has already arrived (zmq wakes asyncio on an edge, not a level), and
    `nbgrader autograde` then sits idle for the full timeout before it reads the reply and goes on: 3 runs in 10
    on chapter 2 here, scores unchanged. Polling in short slices and checking the socket between them removes
    the wait. Put `from diffusion_lib.course.nbgrader_export import poll_in_slices; poll_in_slices()` in
    `nbgrader_config.py`.
    """
    import time
    from queue import Empty

    import zmq
    from jupyter_client.channels import AsyncZMQSocketChannel

    async def get_msg(self, timeout: float | None = None) -> dict:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:  # a level check, which cannot miss
            left = slice_s if deadline is None else min(slice_s, deadline - time.monotonic())
            if left <= 0:
                raise Empty
            await self.socket.poll(int(left * 1000))
        return await self._recv()

    AsyncZMQSocketChannel.get_msg = get_msg
