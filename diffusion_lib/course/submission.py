"""A learner's notebook read without running it: which cells grading needs, and what looks like a shortcut.

Grading runs only the cells the answers need: each answer's solution cell (found by its `exercise:ID` tag),
and, for every global name those cells use, the cell that last defined it before them, repeated until
nothing is missing (usually the chapter's import cell). Names are resolved with Python's own `symtable`,
so a function's parameters and locals are not mistaken for globals. IPython syntax (`%magic`, `!cmd`) is
translated first, as the kernel would.

Two things are flagged for the instructor, not scored: an implement exercise whose function calls the
library (the learner's `my_target` calling `dl.distill.progressive_target`), and a cell changed from the
course that rebinds a check or assigns to a module's attribute (`exercises.check_q_sample = ...`).
"""

from __future__ import annotations

import ast
import builtins
import symtable

from IPython.core.inputtransformer2 import TransformerManager

from .catalogue import exercise_id

_TRANSLATE = TransformerManager()
LIBRARY = "diffusion_lib"


def python_source(source: str) -> str:
    """A cell's source as the kernel runs it: IPython magics and shell escapes turned into Python."""
    try:
        return _TRANSLATE.transform_cell(source)
    except Exception:  # noqa: BLE001 - an untranslatable cell is left for the kernel to report
        return source


def names_of(source: str) -> tuple[set[str], set[str]]:
    """(global names the cell defines, global names it uses without defining them); empty if it does not parse."""
    try:
        table = symtable.symtable(python_source(source), "<cell>", "exec")
    except (SyntaxError, ValueError):
        return set(), set()
    top = table.get_symbols()
    defined = {s.get_name() for s in top if s.is_assigned() or s.is_imported()}
    used = {s.get_name() for s in top if s.is_referenced()}
    scopes = list(table.get_children())
    while scopes:
        scope = scopes.pop()
        used |= {s.get_name() for s in scope.get_symbols() if s.is_global() and s.is_referenced()}
        scopes.extend(scope.get_children())
    return defined, used - defined - set(dir(builtins))


def cells_to_run(cells, targets: list[int]) -> list[int]:
    """Indexes of the code cells that `targets` (solution cells) need, targets included, in notebook order."""
    code = [i for i, cell in enumerate(cells) if cell.cell_type == "code"]
    names = {i: names_of(cells[i].source) for i in code}
    chosen, todo = set(), list(targets)
    while todo:
        index = todo.pop()
        if index in chosen:
            continue
        chosen.add(index)
        for name in names[index][1]:
            before = [i for i in code if i < index and name in names[i][0]]
            after = [i for i in code if i > index and name in names[i][0]]
            if before or after:  # the last definition before the cell; else a helper the learner put after it
                todo.append(before[-1] if before else after[0])
    return sorted(chosen)


def library_aliases(cells) -> set[str]:
    """Names bound anywhere in the notebook to the library or to something imported from it."""
    aliases = {LIBRARY}
    for cell in cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(python_source(cell.source))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                aliases |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.startswith(LIBRARY)}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(LIBRARY):
                aliases |= {a.asname or a.name for a in node.names}
    return aliases


def _dotted(node) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(parts)]) if isinstance(node, ast.Name) else ""


def library_calls(source: str, aliases: set[str]) -> list[str]:
    """The library functions a solution cell's functions call, e.g. ['dl.distill.progressive_target']."""
    try:
        tree = ast.parse(python_source(source))
    except SyntaxError:
        return []
    calls = []
    for function in [n for n in tree.body if isinstance(n, ast.FunctionDef)]:
        for node in ast.walk(function):
            name = _dotted(node.func) if isinstance(node, ast.Call) else ""
            if name and name.split(".")[0] in aliases and name not in calls:
                calls.append(name)
    return calls


def tampering(source: str) -> list[str]:
    """What a cell does to the course's checks or to imported modules: rebinding a check, patching an attribute."""
    try:
        tree = ast.parse(python_source(source))
    except SyntaxError:
        return []
    found = []
    for node in ast.walk(tree):
        targets = (node.targets if isinstance(node, ast.Assign) else [node.target]
                   if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else [])
        for target in targets:
            name = _dotted(target)
            if isinstance(target, ast.Attribute) and name:
                found.append(f"assigns {name}")
            elif isinstance(target, ast.Name) and (target.id == "exercises" or target.id.startswith("check_")):
                found.append(f"rebinds {target.id}")
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name.startswith("check_"):
            found.append(f"defines {node.name}")
        if isinstance(node, ast.Call) and _dotted(node.func) in ("setattr", "builtins.setattr"):
            found.append("calls setattr")
    return found


def flags(cells, course_sources: set[str], implement_ids: set[str]) -> list[str]:
    """The report's flags for one submission (see the module docstring); cells as the course has them are skipped."""
    aliases, found = library_aliases(cells), []
    for index, cell in enumerate(cells):
        if cell.cell_type != "code":
            continue
        ident = exercise_id(cell)
        if ident in implement_ids:
            found += [f"{ident} calls {call}" for call in library_calls(cell.source, aliases)]
        if cell.source not in course_sources:
            found += [f"cell {index} {what}" for what in tampering(cell.source)]
    return found
