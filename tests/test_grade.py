"""`python -m diffusion_lib.course grade`: a class of synthetic chapter-2 submissions, each scored as it deserves."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest

from diffusion_lib.course import exercises
from diffusion_lib.course.catalogue import EXERCISE_TAG, SOLUTION_TAG, course_exercises, exercise_id
from diffusion_lib.course.edition import student_notebook
from diffusion_lib.course.grade import POINTS, Limits, grade, read_reply, summary, write_csv
from diffusion_lib.course.sandbox import network_isolation
from diffusion_lib.course.submission import cells_to_run, flags, library_calls, names_of

REPO = Path(__file__).resolve().parent.parent
CHAPTERS = REPO / "chapters"
CHAPTER = CHAPTERS / "02_forward_noising.ipynb"
Q, HALF = "ch02-q-sample", "ch02-half-signal-step"
RIGHT_HALF = "half_signal_step = int((dl.make_schedule('linear', 1000).alpha_bars < 0.5).nonzero()[0])\n"
NETWORK_PROBE = RIGHT_HALF + ("import socket\ntry:\n    socket.create_connection(('1.1.1.1', 53), timeout=3)\n"
                              "    half_signal_step = -1  # reached the network: this answer then fails\n"
                              "except OSError:\n    pass\n")


def _with_answers(notebook, **sources):
    """A copy of `notebook` whose exercise cells (by id, '-' as '_') hold the given sources."""
    notebook = nbformat.from_dict(notebook)
    for cell in notebook.cells:
        key = (exercise_id(cell) or "").replace("-", "_")
        if key in sources:
            cell.source = sources[key]
    return notebook


def _insert_after(notebook, ident, source):
    """A new code cell right after the cell of exercise `ident` (a learner's own cell)."""
    index = next(i for i, c in enumerate(notebook.cells) if exercise_id(c) == ident)
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(source))
    return notebook


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """The class: (rows by name, CSV rows by name, the summary)."""
    folder = tmp_path_factory.mktemp("collected")
    teacher = jupytext.read(CHAPTER)
    student = student_notebook(teacher)
    q_stub = next(c.source for c in student.cells if exercise_id(c) == Q)
    wrong_q = ("def my_q_sample(x0, t, noise, alpha_bars):\n    ab = alpha_bars[t].reshape(-1, 1, 1, 1)\n"
               "    return ab * x0 + (1 - ab) * noise\n")
    class_ = {
        "teacher": teacher,
        "student": student,
        "wrong": _with_answers(student, ch02_q_sample=wrong_q, ch02_half_signal_step="half_signal_step = 500\n"),
        "redefines_checks": _insert_after(_with_answers(student, ch02_half_signal_step="half_signal_step = 0\n"), HALF,
                                          "exercises.check_q_sample = lambda f: print('PASS: yes') or True\n"
                                          "exercises.CHECKS['ch02-q-sample'] = exercises.check_q_sample\n"
                                          "def check_half_signal_step(answer):\n    return True\n"),
        "crash": _with_answers(teacher, ch02_half_signal_step="half_signal_step = 1 / 0\n"),
        "endless_loop": _with_answers(teacher, ch02_q_sample="while True:\n    pass\n"),
        "endless_function": _with_answers(teacher, ch02_q_sample=q_stub.replace("raise", "while True: pass\n    raise")),
        "calls_the_library": _with_answers(teacher, ch02_q_sample="def my_q_sample(x0, t, noise, alpha_bars):\n"
                                           "    return dl.q_sample(x0, t, dl.make_schedule('linear', 1000), noise)\n"),
        "network": _with_answers(teacher, ch02_half_signal_step=NETWORK_PROBE),
    }
    for name, notebook in class_.items():
        nbformat.write(notebook, folder / f"{name}.ipynb")
    (folder / "not_a_notebook.ipynb").write_text("print('hello')\n")
    paths = sorted(folder.glob("*.ipynb"))
    course = course_exercises(CHAPTERS)
    rows = grade(paths, CHAPTERS, POINTS, Limits(cell_s=20, notebook_s=120), jobs=2)
    write_csv(rows, folder / "grades.csv", course, POINTS)
    with open(folder / "grades.csv", newline="") as handle:
        table = {Path(r["notebook"]).stem: r for r in csv.DictReader(handle)}
    return {Path(row.path).stem: row for row in rows}, table, summary(rows, course, POINTS)


def test_the_instructor_edition_scores_full_points_and_the_student_edition_zero(graded):
    rows, table, _ = graded
    assert (rows["teacher"].points, rows["teacher"].max, rows["teacher"].reason) == ({Q: 2, HALF: 1}, 3, "")
    assert rows["student"].total == 0 and rows["student"].max == 3 and not rows["student"].reason
    assert "NotImplementedError" in rows["student"].hints[Q] and "no answer yet" in rows["student"].hints[HALF]
    assert table["teacher"][Q] == "2" and table["teacher"]["total"] == "3" and table["student"]["total"] == "0"


def test_a_wrong_answer_scores_zero_with_the_checks_own_hint(graded):
    rows, _, _ = graded
    assert rows["wrong"].total == 0
    assert "square roots" in rows["wrong"].hints[Q] and "betas grow" in rows["wrong"].hints[HALF]


def test_a_learner_who_redefines_the_checks_gains_nothing_and_is_flagged(graded):
    rows, _, _ = graded
    assert rows["redefines_checks"].total == 0
    flagged = "; ".join(rows["redefines_checks"].flags)
    assert "assigns exercises.check_q_sample" in flagged and "defines check_half_signal_step" in flagged


def test_a_crash_costs_only_its_own_exercise(graded):
    rows, _, _ = graded
    assert rows["crash"].points == {Q: 2, HALF: 0}
    assert "half_signal_step" in rows["crash"].hints[HALF]  # not defined: the cell raised


def test_endless_loops_are_stopped_and_the_rest_is_graded(graded):
    rows, _, _ = graded
    assert rows["endless_loop"].points == {Q: 0, HALF: 1} and "time limit" in rows["endless_loop"].reason
    assert rows["endless_function"].points == {Q: 0, HALF: 1}, rows["endless_function"]
    assert "time limit" in rows["endless_function"].hints[Q]


def test_a_function_that_calls_the_reference_is_flagged(graded):
    rows, _, summary_text = graded
    assert rows["calls_the_library"].points[Q] == 2
    assert rows["calls_the_library"].flags == ["ch02-q-sample calls dl.q_sample", "ch02-q-sample calls dl.make_schedule"]
    assert "flagged: " in summary_text and "calls dl.q_sample" in summary_text
    assert not rows["teacher"].flags


def test_what_is_not_a_notebook_gets_its_row_and_a_reason(graded):
    rows, table, summary_text = graded
    assert rows["not_a_notebook"].reason.startswith("not a notebook") and not rows["not_a_notebook"].chapter
    assert table["not_a_notebook"]["reason"].startswith("not a notebook")
    assert "graded 9 of 10 notebooks" in summary_text


def test_the_summary_counts_passes_and_names_the_commonest_hint_and_the_manual_questions(graded):
    _, _, text = graded
    assert "ch02-q-sample (implement, 2 pts): passed 4/9; commonest hint" in text
    assert "ch02-open-large-images (open, manual): grade by hand; rubric in chapters/02_forward_noising.ipynb" in text


def test_the_kernel_has_no_network(graded):
    if not network_isolation():
        pytest.skip("unshare cannot make a network namespace on this machine: grading runs without isolation")
    rows, _, _ = graded
    assert rows["network"].points[HALF] == 1


def test_only_the_cells_the_answers_need_are_planned():
    cells = jupytext.read(CHAPTER).cells
    solutions = [i for i, c in enumerate(cells) if SOLUTION_TAG in c.metadata.get("tags", []) and c.cell_type == "code"]
    planned = cells_to_run(cells, solutions)
    assert set(solutions) <= set(planned) and len(planned) <= len(solutions) + 2  # + the import cell
    assert names_of("def f(x, t):\n    y = t\n    return g(x) + y\n") == ({"f"}, {"g"})
    assert library_calls("def f(x):\n    return dl.distill.progressive_target(x)\n", {"dl"}) == \
        ["dl.distill.progressive_target"]


def test_every_exercise_has_an_id_a_check_and_a_rubric_and_no_reference_solution_is_flagged():
    course = course_exercises(CHAPTERS)
    checked = {i for i, e in course.items() if e.kind != "open"}
    assert checked == set(exercises.CHECKS)
    for path in sorted(CHAPTERS.glob("[0-9][0-9]_*.ipynb")):
        cells = jupytext.read(path).cells
        for index, cell in enumerate(cells):
            ident = exercise_id(cell)
            if ident in checked:
                check = next(c for c in cells[index + 1:] if c.cell_type == "code")
                assert f"exercises.{exercises.CHECKS[ident].__name__}(" in check.source, (ident, check.source)
        assert not flags(cells, set(), checked), path.stem
    assert all(e.rubric.startswith("chapters/") for e in course.values() if e.kind == "open")
    assert all(tag.count(":") == 1 for c in jupytext.read(CHAPTER).cells for tag in c.metadata.get("tags", [])
               if tag.startswith(EXERCISE_TAG))


def test_the_py_files_carry_the_same_ids():
    for path in sorted(CHAPTERS.glob("[0-9][0-9]_*.ipynb")):
        ids = [exercise_id(c) for c in jupytext.read(path).cells]
        assert ids == [exercise_id(c) for c in jupytext.read(path.with_suffix(".py")).cells], path.stem


def test_a_forged_reply_without_the_marker_is_ignored():
    assert read_reply("abc", "PASS: everything\n1'forged'\n") is None
    assert read_reply("abc", "abc1'PASS: ok'\n") == (True, "PASS: ok")


def test_the_command_line_writes_the_csv_and_refuses_a_bad_points_table(tmp_path):
    bad = tmp_path / "points.json"
    bad.write_text('{"implement": "lots"}')
    result = subprocess.run([sys.executable, "-m", "diffusion_lib.course", "grade", str(CHAPTER), "--out",
                             str(tmp_path / "g.csv"), "--points", str(bad), "--chapters", str(CHAPTERS)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "points must be numbers" in result.stderr and not (tmp_path / "g.csv").exists()


def test_an_earlier_grade_sheet_is_kept_unless_overwrite(tmp_path):
    sheet = tmp_path / "grades.csv"
    sheet.write_text("notebook,total\nalice.ipynb,5\n")
    result = subprocess.run([sys.executable, "-m", "diffusion_lib.course", "grade", str(CHAPTER), "--out", str(sheet),
                             "--chapters", str(CHAPTERS)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "--overwrite" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert sheet.read_text() == "notebook,total\nalice.ipynb,5\n"


def test_poll_in_slices_reads_a_waiting_or_late_message_and_times_out_when_none_comes(monkeypatch):
    """The nbgrader workaround's get_msg: a reply already queued, one that arrives while it waits, and none at all."""
    import asyncio
    from queue import Empty

    import zmq
    import zmq.asyncio
    from jupyter_client.channels import AsyncZMQSocketChannel
    from jupyter_client.session import Session

    from diffusion_lib.course.nbgrader_export import poll_in_slices

    monkeypatch.setattr(AsyncZMQSocketChannel, "get_msg", AsyncZMQSocketChannel.get_msg)  # restored afterwards
    poll_in_slices(slice_s=0.05)

    async def exchange():
        context, session = zmq.asyncio.Context(), Session()
        kernel, client = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
        kernel.bind("inproc://shell")
        client.connect("inproc://shell")
        channel = AsyncZMQSocketChannel(client, session)
        try:
            with pytest.raises(Empty):
                await channel.get_msg(timeout=0.2)
            session.send(kernel, "execute_reply", {"status": "ok"})
            waiting = await channel.get_msg(timeout=5)
            asyncio.get_running_loop().call_later(0.3, session.send, kernel, "execute_reply", {"status": "late"})
            late = await channel.get_msg(timeout=5)
            return waiting["content"]["status"], late["content"]["status"]
        finally:
            kernel.close(linger=0)
            client.close(linger=0)
            context.term()

    assert asyncio.run(exchange()) == ("ok", "late")


def _nbgrader(venv: Path) -> Path:
    """nbgrader installed from the package index into a virtual environment kept between runs, or a skip."""
    nbgrader = venv / "bin" / "nbgrader"
    if not nbgrader.exists():
        made = subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], capture_output=True)
        pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "nbgrader"],
                             capture_output=True, text=True, timeout=600) if made.returncode == 0 else None
        if pip is None or pip.returncode != 0 or not nbgrader.exists():
            pytest.skip(f"nbgrader could not be installed from the package index: {(pip.stderr if pip else '')[-300:]}")
    return nbgrader


@pytest.mark.slow
def test_nbgrader_autogrades_the_export_with_the_grade_commands_points(tmp_path, tmp_path_factory):
    """The real nbgrader on chapter 2: generate the assignment, autograde a correct and an unanswered submission."""
    nbgrader = _nbgrader(tmp_path_factory.getbasetemp().parent / "nbgrader-venv")
    course, name = tmp_path / "course", CHAPTER.stem
    env = {**os.environ, "PATH": f"{nbgrader.parent}{os.pathsep}{os.environ['PATH']}"}  # nbgrader runs alembic
    run = lambda *args: subprocess.run([str(nbgrader), *args], cwd=course, capture_output=True, text=True, env=env)  # noqa: E731
    result = subprocess.run([sys.executable, "-m", "diffusion_lib.course", "nbgrader-source", str(course),
                             "--chapters", str(CHAPTERS)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    for other in (course / "source").iterdir():
        if other.name != name:
            other.rename(tmp_path / other.name)  # one chapter is enough
    (course / "nbgrader_config.py").write_text(f"c = get_config()\nc.CourseDirectory.root = {str(course)!r}\n"
                                               "c.ExecutePreprocessor.timeout = 300\n"  # as INSTRUCTORS.md says:
                                               "from diffusion_lib.course.nbgrader_export import poll_in_slices\n"
                                               "poll_in_slices()\n")
    assert run("db", "assignment", "add", name).returncode == 0
    generated = run("generate_assignment", name, "--force")
    assert generated.returncode == 0, generated.stderr[-2000:]
    release = course / "release" / name / CHAPTER.name
    for student, notebook in (("correct", course / "source" / name / CHAPTER.name), ("blank", release)):
        (course / "submitted" / student / name).mkdir(parents=True)
        (course / "submitted" / student / name / CHAPTER.name).write_bytes(notebook.read_bytes())
    autograded = run("autograde", name, "--create")
    assert autograded.returncode == 0, autograded.stderr[-2000:]
    script = ("import json, sys\nfrom nbgrader.api import Gradebook\n"
              f"with Gradebook('sqlite:///{course}/gradebook.db') as gb:\n"
              f"    print(json.dumps({{s: {{g.name: g.auto_score for g in gb.find_submission_notebook({name!r}, {name!r}, s).grades}}"
              " for s in ('correct', 'blank')}))\n")
    scores = subprocess.run([str(nbgrader.parent / "python"), "-c", script], capture_output=True, text=True)
    assert scores.returncode == 0, scores.stderr
    nbgrader_points = json.loads(scores.stdout)
    ours = {Path(row.path).parent.parent.name: row for row in
            grade(sorted((course / "submitted").glob(f"*/{name}/*.ipynb")), CHAPTERS, POINTS, Limits(cell_s=60))}
    for student in ("correct", "blank"):
        checked = {key: value for key, value in nbgrader_points[student].items() if key in ours[student].points}
        assert checked == ours[student].points, (student, nbgrader_points[student], ours[student])
    assert ours["correct"].total == ours["correct"].max == 3 and ours["blank"].total == 0
    assert "ch02-open-large-images-answer" in nbgrader_points["correct"]  # the open question: graded by hand there
    assert "**Model answer" not in release.read_text() and "### BEGIN SOLUTION" not in release.read_text()


def _products(text: str) -> set[float]:
    """Every number in `text`, and every product of numbers chained by 'x', '*' or '×' ("5 rounds x 600 x 64")."""
    import re

    found = set()
    for chain in re.findall(r"\d[\d,.]*(?:[ a-z]*? [x*×] [ a-z]*?\d[\d,.]*)*", text):
        numbers = [float(n.replace(",", "")) for n in re.findall(r"\d[\d,]*(?:\.\d+)?", chain)]
        product = 1.0
        for number in numbers:
            product *= number
            found.add(number)
        found.add(product)
    return found


def test_no_predict_answer_leaks_from_a_checks_docstring_or_hint():
    """The hints a check can print (the third argument of _report) and its docstring never hold the answer."""
    import ast
    import inspect

    import diffusion_lib as dl

    course = course_exercises(CHAPTERS)
    for ident, exercise in course.items():
        if exercise.kind != "predict":
            continue
        cells = jupytext.read(CHAPTERS / f"{exercise.chapter}.ipynb").cells
        namespace = {"dl": dl}
        exec(next(c.source for c in cells if exercise_id(c) == ident), namespace)
        answer = float(namespace[exercise.names[0]])
        function = ast.parse(inspect.getsource(exercises.CHECKS[ident])).body[0]
        texts = [ast.get_docstring(function) or ""]
        for node in ast.walk(function):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "_report" and len(node.args) == 3:
                texts += [n.value for n in ast.walk(node.args[2]) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        leaks = [text for text in texts if answer in _products(text) and answer not in (0.0, 1.0, 2.0)]
        assert not leaks, f"{ident}: the answer {answer:g} can be read from {leaks}"
    assert 5 * 600 * 64 * 2 in _products("progressive distillation from 32 steps to 1: 5 rounds x 600 steps x batch 64 x 2")
