"""The compatibility matrix (docs/compatibility.md): every cell of entry point x mode is shown by
a test marked ``@pytest.mark.compat(row, column, outcome, error=None)``, read statically by
docs/hooks/compat_matrix.py, the hook that generates the page's table from the same marks."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def matrix() -> Iterator[ModuleType]:
    """docs/hooks/compat_matrix.py, loaded as MkDocs loads it: by path, registered in sys.modules
    (its dataclass resolves its annotations there)."""
    spec = importlib.util.spec_from_file_location("compat_matrix_hook", ROOT / "docs" / "hooks" / "compat_matrix.py")
    module = importlib.util.module_from_spec(spec)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, spec.name, module)
        spec.loader.exec_module(module)
        yield module


def test_marks_on_functions_and_on_parameters_are_read_with_their_tests(matrix, tmp_path):
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_demo.py").write_text(textwrap.dedent('''
        import pytest

        @pytest.mark.slow
        @pytest.mark.compat("/score", "plain", "works")
        @pytest.mark.compat("/score", "reasoning", "works")
        def test_one(server): ...

        @pytest.mark.parametrize("field, mode", [
            pytest.param("x", 1, marks=pytest.mark.compat("/compare", "robust reward field", "refused",
                                                          error="invalid_request")),
            pytest.param("y", 2, id="named", marks=[pytest.mark.slow, pytest.mark.compat("OpenRLHF", "plain",
                                                                                          "works")]),
            ("z", 3),
        ])
        def test_two(field, mode): ...

        def helper():
            pytest.mark.compat("/score", "monitors", "works")
        '''))
    marks = matrix.collect(tests)
    assert [(m.test, m.cell, m.outcome, m.error) for m in marks] == [
        ("tests/test_demo.py::test_one", ("/score", "plain"), "works", None),
        ("tests/test_demo.py::test_one", ("/score", "reasoning"), "works", None),
        ("tests/test_demo.py::test_two[x-1]", ("/compare", "robust reward field"), "refused", "invalid_request"),
        ("tests/test_demo.py::test_two[named]", ("OpenRLHF", "plain"), "works", None),
    ]
    assert matrix.problems(marks) == []
    table = matrix.matrix_table(marks)
    assert '<abbr title="tests/test_demo.py::test_one">works</abbr>' in table
    assert "refused (`invalid_request`)" in table
    assert table.count("untested") == 7 * 11 - 4 - len(matrix.NOT_A_MODE) and table.count(">n/a<") == 6


def test_a_bad_mark_is_named(matrix, tmp_path):
    Mark = matrix.Mark
    marks = [Mark("/scores", "plain", "works", None, "t::a", 1), Mark("/score", "plain", "fine", None, "t::b", 2),
             Mark("/score", "plain", "refused", None, "t::c", 3), Mark("/score", "plain", "works", "nope", "t::d", 4),
             Mark("/compare", "reasoning", "refused", "NoSuchError", "t::e", 5),
             Mark("/compare", "monitors", "works", None, "t::f", 6)]
    found = "\n".join(matrix.problems(marks))
    for needle in ("t::a (line 1): unknown row '/scores'", "t::b (line 2): unknown outcome 'fine'",
                   "t::c (line 3): a refusal names its error", "t::d (line 4): a cell that works names no error",
                   "got error='NoSuchError'", "t::f (line 6): ('/compare', 'monitors') is not a mode"):
        assert needle in found, found
    # A cell that works may name the edge cases it refuses.
    edge = [Mark("/score", "group-pairwise", "works", None, "t::g", 7),
            Mark("/score", "group-pairwise", "refused", "group_too_small", "t::h", 8)]
    assert matrix.problems(edge, {"group_too_small"}) == []
    assert "works (refuses `group_too_small`)" in matrix.matrix_table(edge)
    (tmp_path / "test_bad.py").write_text("import pytest\n\n@pytest.mark.compat('/score', ROW, 'works')\n"
                                          "def test_x(): ...\n")
    with pytest.raises(ValueError, match="test_bad.py:3: pytest.mark.compat takes literal strings only"):
        matrix.collect(tmp_path)


def test_every_mark_in_the_tests_names_a_known_cell_outcome_and_error(matrix):
    marks = matrix.collect()
    assert marks, "no test carries a compat mark"
    assert matrix.problems(marks) == []


def test_every_cell_of_the_matrix_has_a_test(matrix):
    missing = matrix.missing(matrix.collect())
    assert not missing, (f"{len(missing)} of {len(matrix.ROWS) * len(matrix.COLUMNS)} cells have no test marked "
                         "@pytest.mark.compat(row, column, 'works' or 'refused', error=...):\n"
                         + "\n".join(f"  {row} x {column}" for row, column in missing))
