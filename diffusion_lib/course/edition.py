"""The student edition of the chapters: every code cell tagged `solution` becomes a stub.

The committed chapters are the instructor edition. In the student edition, a solution cell keeps
each function's name and signature with its body replaced by `# YOUR CODE HERE` and a
`raise NotImplementedError`, and each answer variable becomes `None  # YOUR CODE HERE`; the
check cell that follows then reports "NOT YET" with a hint instead of passing. The outputs
stored for the solution cells and the check cells after them are cleared (they would show the
reference answer passing). A markdown cell tagged `solution`, the model answer and rubric of an
open question, is left out. Every other cell, and its stored output, is unchanged. Both files of
each jupytext pair are written.

    python -m diffusion_lib.course student-edition OUT_DIR [--chapters chapters]
"""

from __future__ import annotations

import ast
from pathlib import Path

import jupytext

SOLUTION_TAG = "solution"
STUB_MARK = "# YOUR CODE HERE"


def stub_source(source: str) -> str:
    """The student's version of a solution cell: signatures kept, bodies and answers removed."""
    try:
        tree = ast.parse(source)
    except SyntaxError as error:
        raise ValueError(f"a solution cell is not valid Python ({error}); fix it in the instructor edition") from error
    parts = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            docstring = ast.get_docstring(node)
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


def write_student_edition(chapters: str | Path, out_dir: str | Path) -> list[Path]:
    """Write the student edition of every chapter in `chapters` (its .ipynb files) to `out_dir`, .ipynb and .py."""
    chapters, out_dir = Path(chapters), Path(out_dir)
    notebooks = sorted(chapters.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"no chapter notebooks (NN_name.ipynb) in {chapters}: give the course's chapters/ folder")
    if out_dir.resolve() == chapters.resolve():
        raise ValueError("OUT_DIR must differ from the chapters folder: the student edition would overwrite the solutions")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in notebooks:
        student = student_notebook(jupytext.read(path))
        for suffix, fmt in ((".ipynb", "ipynb"), (".py", "py:percent")):
            target = out_dir / path.with_suffix(suffix).name
            jupytext.write(student, target, fmt=fmt)
            written.append(target)
    config = next((d / "jupytext.toml" for d in (chapters, chapters.parent) if (d / "jupytext.toml").exists()), None)
    if config is not None:  # the pairing settings, so that the new folder's pairs stay paired
        (out_dir / config.name).write_text(config.read_text())
        written.append(out_dir / config.name)
    return written
