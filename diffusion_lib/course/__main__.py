"""Course tools for instructors: `python -m diffusion_lib.course student-edition OUT_DIR`."""

from __future__ import annotations

import argparse
import sys

from .edition import write_student_edition


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffusion_lib.course", description="Course tools for instructors.")
    commands = parser.add_subparsers(dest="command", required=True)
    student = commands.add_parser("student-edition", help="write the chapters with their solution cells stubbed out")
    student.add_argument("out_dir", help="folder for the student edition (created if missing)")
    student.add_argument("--chapters", default="chapters", help="the instructor edition's folder (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        written = write_student_edition(args.chapters, args.out_dir)
    except (FileNotFoundError, ValueError) as error:
        print(f"python -m diffusion_lib.course: error: {error}", file=sys.stderr)
        return 2
    print(f"student edition: {len(written)} files in {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
