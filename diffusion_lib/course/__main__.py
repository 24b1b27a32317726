"""Course tools for instructors.

    python -m diffusion_lib.course student-edition OUT_DIR   # the chapters without their solutions
    python -m diffusion_lib.course repoint OWNER/NAME        # every Colab, Binder and pip link to your fork
    python -m diffusion_lib.course grade NOTEBOOK... --out grades.csv   # score a class's submissions
    python -m diffusion_lib.course nbgrader-source OUT_DIR   # the student edition in nbgrader's source format
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import grade as grading
from ..outputs import check_writable
from .edition import write_student_edition
from .fork import REPOSITORY, repoint


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffusion_lib.course", description="Course tools for instructors.")
    commands = parser.add_subparsers(dest="command", required=True)
    student = commands.add_parser("student-edition", help="write the chapters with their solution cells stubbed out")
    student.add_argument("out_dir", help="folder for the student edition (created if missing; never overwrites a file)")
    student.add_argument("--chapters", default="chapters", help="the instructor edition's folder (default %(default)s)")
    fork = commands.add_parser("repoint", help=f"point the chapters' and README's links at a fork (now {REPOSITORY})")
    fork.add_argument("repository", help="the fork on GitHub, as OWNER/NAME")
    fork.add_argument("--root", default=".", help="the course's repository root (default: the current folder)")
    add_grade_parser(commands)
    export = commands.add_parser("nbgrader-source", help="write the chapters as nbgrader assignments (source format)")
    export.add_argument("course_dir", help="nbgrader's course folder: writes COURSE_DIR/source/NN_name/NN_name.ipynb")
    export.add_argument("--chapters", default="chapters", help="the instructor edition's folder (default %(default)s)")
    export.add_argument("--points", help="JSON points table, as for grade")
    args = parser.parse_args(argv)
    if args.command == "grade":
        return run_grade(args)
    if args.command == "nbgrader-source":
        return run_export(args)
    try:
        if args.command == "repoint":
            changed = repoint(args.root, args.repository)
        else:
            report = write_student_edition(args.chapters, args.out_dir)
    except (OSError, ValueError) as error:  # OSError: a missing, unwritable or non-folder path
        print(f"python -m diffusion_lib.course: error: {error}", file=sys.stderr)
        return 2
    if args.command == "repoint":
        print(f"links now point at {args.repository}: {sum(changed.values())} in {len(changed)} files")
    else:
        print_edition_report(report, args.out_dir)
    return 0


def add_grade_parser(commands) -> None:
    grade = commands.add_parser("grade", help="grade submitted notebooks with the course's checks; one CSV row each")
    grade.add_argument("notebooks", nargs="+", help="the submissions (.ipynb)")
    grade.add_argument("--out", required=True, help="the CSV to write (grades.csv)")
    grade.add_argument("--chapters", default="chapters", help="the instructor edition's folder (default %(default)s)")
    grade.add_argument("--points", help='JSON points table by kind or exercise id, e.g. {"implement": 3, "ch03-ideal-x0": 5}')
    grade.add_argument("--cell-timeout", type=float, default=60.0, help="seconds per cell and per check (default %(default)s)")
    grade.add_argument("--notebook-timeout", type=float, default=300.0, help="seconds per notebook (default %(default)s)")
    grade.add_argument("--jobs", type=int, default=2, help="notebooks graded at once (default %(default)s)")
    grade.add_argument("--full", action="store_true", help="run the setup cells in full mode, not fast mode")
    grade.add_argument("--overwrite", action="store_true", help="replace the --out file if it exists")


def run_grade(args) -> int:
    """`grade`: write the CSV, print the class summary."""
    try:
        if Path(args.out).exists() and not args.overwrite:  # an earlier grade sheet is not lost
            raise ValueError(f"--out {args.out} exists already: choose another name, or add --overwrite to replace it")
        check_writable(Path(args.out).resolve().parent)  # before minutes of grading, not after
        table = {**grading.POINTS, **grading.read_points(args.points)}
        course = grading.course_exercises(args.chapters)
    except (OSError, ValueError) as error:
        print(f"python -m diffusion_lib.course: error: {error}", file=sys.stderr)
        return 2
    limits = grading.Limits(args.cell_timeout, args.notebook_timeout, fast=not args.full)
    start = time.perf_counter()
    rows = grading.grade(args.notebooks, args.chapters, table, limits, args.jobs)
    grading.write_csv(rows, args.out, course, table)
    print(grading.summary(rows, course, table))
    print(f"{len(rows)} rows in {args.out} ({time.perf_counter() - start:.0f} s; network: {network_note()})")
    return 0


def run_export(args) -> int:
    """`nbgrader-source`: write what is missing, name what was kept."""
    from .nbgrader_export import write_nbgrader_source

    try:
        table = {**grading.POINTS, **grading.read_points(args.points)}
        written, kept = write_nbgrader_source(args.chapters, args.course_dir, table)
    except (OSError, ValueError) as error:
        print(f"python -m diffusion_lib.course: error: {error}", file=sys.stderr)
        return 2
    print(f"nbgrader source in {args.course_dir}/source: {len(written)} written, {len(kept)} kept as they are")
    if kept:
        print(f"kept, not overwritten: {', '.join(str(path) for path in kept)}")
    return 0


def network_note() -> str:
    from .sandbox import network_isolation

    return "none (own network namespace)" if network_isolation() else "NOT isolated: unshare is unavailable here"


def print_edition_report(report, out_dir) -> None:
    """Say what was written, and name every learner's file kept as it is (kept files are not an error)."""
    print(f"student edition in {out_dir}: files written {len(report.written)}, "
          f"already up to date {len(report.up_to_date)}, kept as they are {len(report.kept)}")
    if report.kept:
        print("kept, not overwritten, because they or their chapter's other file differ from the edition "
              f"(a learner's work?): {', '.join(path.name for path in report.kept)}")
        print(f"to get a fresh copy of a chapter, move both its files out of {out_dir} and run this again")


if __name__ == "__main__":
    sys.exit(main())
