"""Run a chapter top to bottom in a fresh Jupyter kernel ("Restart and Run All"), outside JupyterLab.

Used by the student-edition test and by `benchmarks/run.py --only course`, which also times each
chapter and reads its peak memory:

    python -m diffusion_lib.course.runner chapters/02_forward_noising.ipynb [--fast]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import jupytext


def run_notebook(path: str | Path, fast: bool = False, timeout: float = 1200) -> dict[int, str]:
    """Execute every code cell of the notebook at `path` in a new python3 kernel started in its folder.

    Returns {cell index: the text the cell printed}. Raises RuntimeError naming the first cell that fails.
    """
    from jupyter_client.manager import start_new_kernel

    path = Path(path)
    notebook = jupytext.read(path)
    env = {**os.environ}
    if fast:
        env["DIFFUSION_COURSE_FAST"] = "1"
    else:
        env.pop("DIFFUSION_COURSE_FAST", None)
    manager, client = start_new_kernel(kernel_name="python3", cwd=str(path.parent.resolve()), env=env)
    printed = {}
    try:
        for index, cell in enumerate(notebook.cells):
            if cell.cell_type != "code":
                continue
            texts = []

            def collect(message, texts=texts):
                if message["msg_type"] == "stream":
                    texts.append(message["content"]["text"])
                elif message["msg_type"] == "error":
                    texts.append(f"{message['content']['ename']}: {message['content']['evalue']}")

            reply = client.execute_interactive(cell.source, timeout=timeout, output_hook=collect)
            printed[index] = "".join(texts)
            if reply["content"]["status"] != "ok":
                raise RuntimeError(f"{path.name}: cell {index} failed: {printed[index][-500:]}")
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    return printed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook")
    parser.add_argument("--fast", action="store_true", help="fast mode (DIFFUSION_COURSE_FAST=1)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        run_notebook(args.notebook, args.fast)
        ok = True
    except RuntimeError as error:
        print(error, file=sys.stderr)
        ok = False
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the kernel: the largest child
    print(f"seconds {seconds:.1f} peak_mib {peak_mib:.0f} ok {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
