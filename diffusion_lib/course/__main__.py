"""Course tools for instructors.

    python -m diffusion_lib.course student-edition OUT_DIR   # the chapters without their solutions
    python -m diffusion_lib.course repoint OWNER/NAME        # every Colab, Binder and pip link to your fork
"""

from __future__ import annotations

import argparse
import sys

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
    args = parser.parse_args(argv)
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
