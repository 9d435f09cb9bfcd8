"""MkDocs hook: the compatibility matrix, generated from the tests that show each cell.

A test marks what it demonstrates with ``@pytest.mark.compat(row, column, outcome)``:
an entry point (a row of :data:`ROWS`) in a mode (a column of :data:`COLUMNS`) either
``works`` or is ``refused`` with a named error, ``error=`` an error ``type`` of
drlaif/errors.py or an exception class's name::

    @pytest.mark.compat("/compare", "robust reward field", "refused", error="invalid_request")

A cell that works may also carry refusals of its edge cases (a group of one response under
group-pairwise judging); the table shows them beside "works". One kind of cell is neither:
monitors are a training loop's, so at a server route other than /score (the route a monitor
calls) and in a framework that runs its own loop the mode does not exist. Those cells are listed
in :data:`NOT_A_MODE` with the reason the table gives, and no test marks them.

A mark may sit on a test function or in ``marks=`` of one ``pytest.param`` of its
``pytest.mark.parametrize``. The marks are read statically (``ast``, nothing of the tests is
imported), so the docs build and tests/test_compatibility.py see the same marks without
running a test. A page that holds the line ``<!-- compat-matrix -->`` gets the table: each
cell "works" or "refused (error)", with the tests that show it in its tooltip.
"""

from __future__ import annotations

import ast
import builtins
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MARKER = re.compile(r"^<!-- compat-matrix -->$", re.MULTILINE)
TESTS = ROOT / "tests"

#: The entry points: server routes, the trainer's algorithms and the framework adapters.
ROWS = ("/score", "/compare", "/get_reward", "rubric lab", "drlaif-train ppo", "drlaif-train grpo",
        "drlaif-train rloo", "trl reward function", "veRL compute_score", "veRL batch manager", "OpenRLHF")
#: The modes an entry point may be used in.
COLUMNS = ("plain", "reasoning", "constitution", "group-pairwise", "robust reward field", "monitors",
           "drop-on-failure")
OUTCOMES = ("works", "refused")
_NO_LOOP = "monitors score held-out samples between training steps; this entry point runs no training loop"
_OWN_LOOP = ("the framework runs its own training loop, which drlaif does not evaluate in; monitor its "
             "checkpoints with drlaif-eval, or train with drlaif-train")
#: Cells where the column's mode does not exist for the row, with the reason.
NOT_A_MODE = {("/compare", "monitors"): _NO_LOOP, ("/get_reward", "monitors"): _NO_LOOP,
              ("rubric lab", "monitors"): _NO_LOOP, ("veRL compute_score", "monitors"): _OWN_LOOP,
              ("veRL batch manager", "monitors"): _OWN_LOOP, ("OpenRLHF", "monitors"): _OWN_LOOP}
# Where the exception classes a refusal may name are defined.
SOURCES = ("drlaif", "server", "trainer", "evals")


@dataclass(frozen=True)
class Mark:
    """One ``pytest.mark.compat`` as written in a test file."""

    row: str
    column: str
    outcome: str
    error: str | None
    test: str  # file::name, with the parameter's id for a mark on one pytest.param
    line: int

    @property
    def cell(self) -> tuple[str, str]:
        return self.row, self.column


def _is_mark(node: ast.expr, name: str) -> bool:
    """``node`` is ``pytest.mark.<name>`` (or ``mark.<name>``)."""
    return (isinstance(node, ast.Attribute) and node.attr == name and isinstance(node.value, ast.Attribute)
            and node.value.attr == "mark")


def _mark(call: ast.Call, test: str, path: str) -> Mark:
    """A compat mark's arguments, which must be literals."""
    where = f"{path}:{call.lineno}"
    try:
        args = [ast.literal_eval(a) for a in call.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    except ValueError:
        raise ValueError(f"{where}: pytest.mark.compat takes literal strings only") from None
    if len(args) != 3 or set(kwargs) - {"error"}:
        raise ValueError(f"{where}: pytest.mark.compat(row, column, outcome, error=None), got {len(args)} "
                         f"arguments and {sorted(kwargs)}")
    return Mark(*args, error=kwargs.get("error"), test=test, line=call.lineno)


def _param_id(param: ast.Call, index: int) -> str:
    """The id pytest gives a ``pytest.param``: its ``id=``, else its literal values joined by "-"."""
    for keyword in param.keywords:
        if keyword.arg == "id":
            return str(ast.literal_eval(keyword.value))
    try:
        return "-".join(str(ast.literal_eval(a)) for a in param.args)
    except ValueError:
        return str(index)


def _marks_of(function: ast.FunctionDef | ast.AsyncFunctionDef, path: str) -> Iterable[Mark]:
    test = f"{path}::{function.name}"
    for decorator in function.decorator_list:
        if not isinstance(decorator, ast.Call):
            continue
        if _is_mark(decorator.func, "compat"):
            yield _mark(decorator, test, path)
        elif _is_mark(decorator.func, "parametrize"):
            values = decorator.args[1] if len(decorator.args) > 1 else None
            for index, param in enumerate(values.elts if isinstance(values, ast.List | ast.Tuple) else ()):
                if not (isinstance(param, ast.Call) and isinstance(param.func, ast.Attribute)
                        and param.func.attr == "param"):
                    continue
                for keyword in param.keywords:
                    if keyword.arg != "marks":
                        continue
                    calls = keyword.value.elts if isinstance(keyword.value, ast.List | ast.Tuple) else [keyword.value]
                    for call in calls:
                        if isinstance(call, ast.Call) and _is_mark(call.func, "compat"):
                            yield _mark(call, f"{test}[{_param_id(param, index)}]", path)


def collect(tests: Path = TESTS) -> list[Mark]:
    """Every compat mark in ``tests``/test_*.py, in file and line order."""
    marks: list[Mark] = []
    for file in sorted(tests.glob("test_*.py")):
        path = file.relative_to(tests.parent).as_posix()
        for node in ast.walk(ast.parse(file.read_text(), filename=str(file))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test"):
                marks.extend(_marks_of(node, path))
    return marks


def error_names() -> set[str]:
    """The names a refusal may give: drlaif/errors.py's error types, the exception classes the
    project defines (found statically) and Python's built-in exceptions."""
    from drlaif.errors import ERRORS

    names = {e.type for e in ERRORS}
    names |= {n for n, v in vars(builtins).items() if isinstance(v, type) and issubclass(v, BaseException)}
    for package in SOURCES:
        for file in (ROOT / package).rglob("*.py"):
            names |= {node.name for node in ast.walk(ast.parse(file.read_text()))
                      if isinstance(node, ast.ClassDef)}
    return names


def problems(marks: Sequence[Mark], known_errors: set[str] | None = None) -> list[str]:
    """What is wrong with the marks: an unknown row, column, outcome or error, a refusal
    without its error (or a success with one), a mark on a cell whose mode does not exist."""
    known_errors = error_names() if known_errors is None else known_errors
    found = []
    for m in marks:
        where = f"{m.test} (line {m.line})"
        for value, allowed, what in ((m.row, ROWS, "row"), (m.column, COLUMNS, "column"),
                                     (m.outcome, OUTCOMES, "outcome")):
            if value not in allowed:
                found.append(f"{where}: unknown {what} {value!r}; one of {', '.join(allowed)}")
        if m.outcome == "refused" and m.error not in known_errors:
            found.append(f"{where}: a refusal names its error (an error type of drlaif/errors.py or an "
                         f"exception class), got error={m.error!r}")
        if m.outcome == "works" and m.error is not None:
            found.append(f"{where}: a cell that works names no error, got error={m.error!r}")
        if m.cell in NOT_A_MODE:
            found.append(f"{where}: {m.cell} is not a mode of that entry point ({NOT_A_MODE[m.cell]})")
    return found


def missing(marks: Sequence[Mark]) -> list[tuple[str, str]]:
    """The cells of the matrix that no test marks (and that are a mode of their entry point), row by row."""
    marked = {m.cell for m in marks} | set(NOT_A_MODE)
    return [(row, column) for row in ROWS for column in COLUMNS if (row, column) not in marked]


def _cell(marks: Sequence[Mark], not_a_mode: str | None = None) -> str:
    if not_a_mode:
        return f'<abbr title="{not_a_mode}">n/a</abbr>'
    if not marks:
        return "untested"
    tests = "; ".join(dict.fromkeys(m.test for m in marks))
    errors = ", ".join(f"`{e}`" for e in sorted({m.error for m in marks if m.error}))
    if any(m.outcome == "works" for m in marks):
        text = f"works (refuses {errors})" if errors else "works"
    else:
        text = f"refused ({errors})"
    return f'<abbr title="{tests}">{text}</abbr>'


def matrix_table(marks: Sequence[Mark] | None = None) -> str:
    """The Markdown table of the matrix: one row per entry point, one column per mode."""
    marks = collect() if marks is None else marks
    lines = ["| | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for row in ROWS:
        cells = [_cell([m for m in marks if m.cell == (row, column)], NOT_A_MODE.get((row, column)))
                 for column in COLUMNS]
        lines.append(f"| **{row}** | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if not MARKER.search(markdown):
        return markdown
    return MARKER.sub(lambda _: matrix_table(), markdown)
