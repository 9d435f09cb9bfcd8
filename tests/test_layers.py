"""The import contract between drlaif's top-level packages, and what importing the ground floor loads.

    drlaif/   the ground floor: the wire contract, the reward client, prompt text, statistics, ...
    server/   stands on drlaif
    trainer/  stands on drlaif (not on the server's internals, not on evals)
    evals/    stands on drlaif and trainer
    bench/    may use everything

Every import counts: at the top of a module, inside a function, under ``TYPE_CHECKING``, relative,
or a string given to ``importlib.import_module``. The checker is a function over a directory, so
the test also shows it catching an import that breaks the contract.

The tests keep a contract of their own: no test file imports another (or conftest.py); what two
of them share lives in tests/support.py.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Which of the project's packages each package may import (besides itself).
MAY_IMPORT: dict[str, frozenset[str]] = {
    "drlaif": frozenset(),
    "server": frozenset({"drlaif"}),
    "trainer": frozenset({"drlaif"}),
    "evals": frozenset({"drlaif", "trainer"}),
    "bench": frozenset({"drlaif", "server", "trainer", "evals"}),
}


def _imported_modules(tree: ast.AST, package: list[str]) -> Iterator[tuple[int, str]]:
    """(line, dotted module) of every import in ``tree``, wherever it is; ``package`` is the
    dotted path of the module's package, for relative imports."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            if node.module is None:  # `from . import x`: x is a module of the package
                for alias in node.names:
                    yield node.lineno, f"{module}.{alias.name}" if module else alias.name
            else:
                yield node.lineno, module
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__")))):
            yield node.lineno, node.args[0].value


def layer_violations(root: Path, may_import: dict[str, frozenset[str]] = MAY_IMPORT) -> list[str]:
    """Every import under ``root`` that breaks ``may_import``, as "path:line: a imports b"."""
    found = []
    for top, allowed in may_import.items():
        for path in sorted((root / top).rglob("*.py")):
            rel = path.relative_to(root)
            package = list(rel.parent.parts)
            tree = ast.parse(path.read_text(), filename=str(rel))
            for line, module in _imported_modules(tree, package):
                target = module.split(".")[0]
                if target in may_import and target != top and target not in allowed:
                    found.append(f"{rel}:{line}: {top} imports {module}")
    return found


def test_each_package_imports_only_the_layers_below_it():
    assert layer_violations(ROOT) == []


def test_every_installed_package_has_a_place_in_the_contract():
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    installed = {pattern.rstrip("*") for pattern in find["include"]}
    assert installed <= set(MAY_IMPORT)
    assert all((ROOT / top).is_dir() for top in MAY_IMPORT)


def test_the_checker_catches_a_trainer_importing_evals_or_the_server(tmp_path):
    for top in MAY_IMPORT:
        shutil.copytree(ROOT / top, tmp_path / top, ignore=shutil.ignore_patterns("__pycache__", "*.jsonl"))
    assert layer_violations(tmp_path) == []
    (tmp_path / "trainer" / "probe.py").write_text(
        "import evals.stats\n"
        "\n"
        "\n"
        "def later():\n"
        "    from server.scorer import Scorer\n"
        "    return Scorer\n")
    (tmp_path / "drlaif" / "probe.py").write_text(
        "import importlib\n"
        "\n"
        "SERVER = importlib.import_module('server.config')\n"
        "from drlaif import protocol  # its own layer: fine\n")
    (tmp_path / "evals" / "probe.py").write_text("from trainer import config  # allowed\nfrom bench import peers\n")
    assert layer_violations(tmp_path) == [
        "drlaif/probe.py:3: drlaif imports server.config",
        "trainer/probe.py:1: trainer imports evals.stats",
        "trainer/probe.py:5: trainer imports server.scorer",
        "evals/probe.py:2: evals imports bench",
    ]


def test_relative_imports_are_resolved_to_their_package(tmp_path):
    (tmp_path / "trainer" / "sub").mkdir(parents=True)
    (tmp_path / "trainer" / "sub" / "probe.py").write_text("from . import sibling\nfrom ..client import x\n")
    (tmp_path / "evals").mkdir()
    (tmp_path / "evals" / "probe.py").write_text("from .stats import wilson\n")
    assert layer_violations(tmp_path, {"trainer": frozenset(), "evals": frozenset()}) == []
    assert list(_imported_modules(ast.parse("from ..client import x"), ["trainer", "sub"])) == [
        (1, "trainer.client")]



def imports_of_test_files(tests: Path) -> list[str]:
    """Every import of one test file (or of conftest.py) by a test file under ``tests``, as
    "file:line: imports module": what two test files share belongs in tests/support.py."""
    test_modules = {p.stem for p in tests.glob("test_*.py")} | {"conftest"}
    found = []
    for path in sorted(tests.glob("test_*.py")):
        tree = ast.parse(path.read_text(), filename=path.name)
        for line, module in _imported_modules(tree, ["tests"]):
            parts = module.split(".")
            parts = parts[1:] if parts[0] == "tests" else parts
            if parts and parts[0] in test_modules:
                found.append(f"{path.name}:{line}: imports {module}")
    return found


def test_no_test_file_imports_another():
    assert imports_of_test_files(ROOT / "tests") == []


def test_the_test_file_check_catches_a_test_file_importing_another(tmp_path):
    (tmp_path / "conftest.py").write_text("import pytest\n")
    (tmp_path / "support.py").write_text("HELPER = 1\n")
    (tmp_path / "test_a.py").write_text("import support\nfrom test_b import helper\n")
    (tmp_path / "test_b.py").write_text("def helper():\n    from tests.conftest import server\n    return server\n")
    (tmp_path / "test_c.py").write_text("from . import test_a\nfrom support import HELPER\n")
    assert imports_of_test_files(tmp_path) == [
        "test_a.py:2: imports test_b",
        "test_b.py:2: imports tests.conftest",
        "test_c.py:1: imports tests.test_a",
    ]


HEAVY = ("numpy", "torch", "transformers", "fastapi", "starlette", "uvicorn")


def _loaded_after(statement: str) -> list[str]:
    """Which of HEAVY a fresh interpreter has loaded after running ``statement``."""
    check = f"import sys; {statement}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_the_wire_contract_loads_pydantic_and_nothing_heavier():
    # A trainer that only calls a server validates its answers with these models: it must not
    # pay for (or need) numpy, torch, transformers or the web framework to import them.
    assert _loaded_after("import drlaif.protocol") == []


@pytest.mark.parametrize("module", ["drlaif.client", "drlaif.reward_failures", "drlaif.replica_routing"])
def test_the_reward_client_loads_no_torch_transformers_or_web_framework(module):
    # A trainer built on another framework needs only the client (numpy would be allowed).
    assert set(_loaded_after(f"import {module}")) <= {"numpy"}
