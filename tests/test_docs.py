"""The documentation: the site builds strictly, its configuration reference covers every
setting with its default, and the README stays short with its commands up front.

Then the pages against the code, without starting anything: every `--flag` shown with a drlaif
command is in that command's parser, a default quoted beside its flag is the code's, the API
page's error table is generated from the list of errors, the only place the server's errors are
declared, a figure quoted in several places agrees with its source, and the development page's
map names every module."""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import io
import json
import math
import os
import re
import shlex
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


class _Tables(HTMLParser):
    """Rows of every <table>, as lists of cell texts, under the <h3> that precedes them."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[tuple[str, list[list[str]]]] = [("", [])]
        self._heading: list[str] | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "h3":
            self._heading = []
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "h3" and self._heading is not None:
            self.sections.append(("".join(self._heading).strip(), []))
            self._heading = None
        elif tag in ("td", "th") and self._cell is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.sections[-1][1].append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        elif self._heading is not None:
            self._heading.append(data)


def _sections(page: Path) -> list[tuple[str, list[list[str]]]]:
    parser = _Tables()
    parser.feed(page.read_text())
    return parser.sections


def _rows_by_flag(rows: list[list[str]]) -> dict[str, list[str]]:
    """Data rows keyed on their first flag (`--truncate, --no-truncate` -> `--truncate`)."""
    out: dict[str, list[str]] = {}
    for row in rows:
        if row and row[0].startswith("--"):
            flag = row[0].split(",")[0].strip()
            assert flag not in out, f"{flag} is listed twice"
            out[flag] = row
    return out


def _assert_default(cell: str, default, where: str) -> None:
    if default is None:
        assert cell == "unset", f"{where}: default {cell!r}, expected unset"
    elif isinstance(default, bool):
        assert cell == str(default).lower(), f"{where}: default {cell!r}, expected {default}"
    elif isinstance(default, int | float):
        assert float(cell) == default, f"{where}: default {cell!r}, expected {default}"
    elif isinstance(default, Path):
        assert Path(cell).expanduser() == default, f"{where}: default {cell!r}, expected {default}"
    elif isinstance(default, list):
        # The reference writes an empty list as "(none)" (docs/hooks/config_reference.py).
        words = [] if cell == "(none)" else cell.split()
        assert words == [str(v) for v in default], f"{where}: default {cell!r}, expected {default}"
    else:
        assert cell == str(default), f"{where}: default {cell!r}, expected {default!r}"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRLAIF_")}
    env["NO_MKDOCS_2_WARNING"] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(out)],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return out


def test_the_site_builds_strictly_with_every_page(site):
    import yaml

    def pages(nav):
        for entry in nav:
            for value in entry.values():
                yield from pages(value) if isinstance(value, list) else [value]

    # The nav names every Markdown page, and each became HTML (strict mode fails on broken links).
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    listed = set(pages(config["nav"]))
    written = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert listed == written
    for page in listed:
        html = site / ("index.html" if page == "index.md" else page.removesuffix(".md") + "/index.html")
        assert html.is_file(), page


def test_server_reference_lists_every_setting_with_flag_env_and_default(site, monkeypatch):
    from server.config import ServerSettings

    for name in [k for k in os.environ if k.startswith("DRLAIF_")]:
        monkeypatch.delenv(name)
    rows = _rows_by_flag([r for _, rows in _sections(site / "reference/server/index.html") for r in rows])
    fields = ServerSettings.model_fields
    expected = {"--" + name.replace("_", "-"): (name, info) for name, info in fields.items()}
    assert set(rows) == set(expected)
    for flag, (name, info) in expected.items():
        flags, env, default = rows[flag][:3]
        assert env == "DRLAIF_" + name.upper()
        if info.annotation is bool:
            assert flags == f"{flag}, --no-{flag[2:]}"
        _assert_default(default, info.get_default(call_default_factory=True), flag)
        assert rows[flag][4], f"{flag} has no description"


def test_trainer_reference_lists_every_setting_of_every_algorithm_with_its_default(site):
    from trainer.cli import ALGORITHMS

    sections = _sections(site / "reference/trainer/index.html")
    for algorithm, config_cls in ALGORITHMS.items():
        # The tables that apply: those under a heading that names the algorithm.
        rows = _rows_by_flag([row for title, rows in sections if algorithm in re.findall(r"\w+", title)
                              for row in rows])
        fields = dataclasses.fields(config_cls)
        expected = {"--" + f.name.replace("_", "-"): f for f in fields}
        assert set(rows) == set(expected), algorithm
        for flag, f in expected.items():
            _flags, key, default = rows[flag][:3]
            assert key == f.name
            value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            _assert_default(default, value, f"{algorithm} {flag}")


def test_readme_is_short_and_starts_with_the_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 220, f"README.md has {len(lines)} lines"
    head = "\n".join(lines[:80])
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test"):
        assert f"\n{target}:" in makefile
        assert f"make {target}" in head
    assert 'pip install ".[vllm]"' in head
    assert "drlaif-server --backend vllm --model " in head
    assert "drlaif-train ppo --reward-url http://" in head
    gpu_install = next(line for line in lines if ".[vllm]" in line and "pip install" in line)
    assert "constraints.txt" not in gpu_install, "the CPU torch pin must not be on the GPU install line"
    for word in ("DESIGN.md", "../shared"):
        assert word not in "\n".join(lines)


# ----------------------------------------------------------------------------- pages against the code

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
COMMANDS = ("drlaif-server", "drlaif-train", "drlaif-eval", "drlaif-label")
MODULES = {"server.cli": "drlaif-server", "trainer.cli": "drlaif-train", "evals.cli": "drlaif-eval"}
# Fenced blocks in these languages hold no shell commands.
NOT_SHELL = {"yaml", "json", "python", "toml", "text"}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9._-]*")
# Flags in the pages that belong to other tools, and placeholders; anything else must be a
# flag of a drlaif command.
FOREIGN_FLAGS = {
    "--no-deps": "pip",
    "--extra-index-url": "pip",
    "--exit-code-from": "docker compose",
    "--strict": "mkdocs build",
    "--rule": "bench/rule_reward_server.py",
    "--only": "bench/fleet.py",
    "--ppo-defaults": "bench/trainer_peers.py",
    "--dist": "pytest-xdist",
    "--no-loadscope-reorder": "pytest-xdist",
    "--reward.remote_url": "OpenRLHF",
    "--remote_rm_url": "OpenRLHF (before 0.11)",
    "--label_key": "OpenRLHF",
    "--flag": "a placeholder",
    "--name": "a placeholder for a switch's flag",
    "--no-name": "a placeholder for a switch's flag",
}


def _relative(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _argparse_flags(parser: argparse.ArgumentParser) -> set[str]:
    return set(parser._option_string_actions)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))


@pytest.fixture(scope="module")
def cli_flags() -> dict[str, dict[str | None, set[str]]]:
    """Each command's flags, per subcommand (None for a command without subcommands), as its
    real parser takes them; drlaif-server's from its own --help."""
    from evals.cli import make_parser as eval_parser
    from evals.config import LabelConfig
    from server.config import parse_settings
    from trainer.cli import make_parser as train_parser
    from trainer.config import build_parser

    help_text = io.StringIO()
    with contextlib.redirect_stdout(help_text), pytest.raises(SystemExit):
        parse_settings(["--help"])
    usage = help_text.getvalue().split("options:")[0]
    server = set(FLAG.findall(usage)) | {"-h", "--help"}
    assert "--max-queue-items" in server and "--no-truncate" in server, usage
    return {
        "drlaif-server": {None: server},
        "drlaif-train": {k: _argparse_flags(p) for k, p in _subcommands(train_parser()).items()},
        "drlaif-eval": {k: _argparse_flags(p) for k, p in _subcommands(eval_parser()).items()},
        "drlaif-label": {None: _argparse_flags(build_parser(LabelConfig, argparse.ArgumentParser()))},
    }


def _shell_snippets(text: str) -> list[tuple[int, str, bool]]:
    """(line number, text, from a code block) of what may hold a shell command: each line of a
    fenced block (backslash continuations joined, comments cut) and each inline code span."""
    lines = text.splitlines()
    out, i, fence = [], 0, None
    while i < len(lines):
        line = lines[i]
        opening = re.match(r"\s*```(\w*)", line)
        if opening:
            fence = None if fence is not None else opening.group(1)
            i += 1
            continue
        if fence is not None:
            start, joined = i, line
            while joined.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                joined = joined.rstrip()[:-1] + " " + lines[i]
            if fence not in NOT_SHELL:
                out.append((start + 1, re.sub(r"(^|\s)#.*", "", joined), True))
        else:
            out += [(i + 1, m.group(1), False) for m in re.finditer(r"`([^`\n]+)`", line)]
        i += 1
    return out


def _drlaif_commands(snippet: str, in_block: bool) -> list[tuple[str, str | None, list[str]]]:
    """(command, subcommand or None, flags) of each drlaif command in a snippet."""
    parts = re.split(r"&&|\|\||;|\s\|\s|\s&(?=\s|$)" if in_block else r"&&|;", snippet)
    found = []
    for part in parts:
        try:
            tokens = shlex.split(part)
        except ValueError:  # an unbalanced quote in some other tool's arguments
            tokens = part.split()
        for k, token in enumerate(tokens):
            if os.path.basename(token) in COMMANDS:
                name, rest = os.path.basename(token), tokens[k + 1:]
            elif token == "-m" and k + 1 < len(tokens) and tokens[k + 1] in MODULES:
                name, rest = MODULES[tokens[k + 1]], tokens[k + 2:]
            else:
                continue
            sub = None
            if name in ("drlaif-train", "drlaif-eval") and rest and not rest[0].startswith("-"):
                sub, rest = rest[0], rest[1:]
            found.append((name, sub, [t.split("=")[0] for t in rest if FLAG.fullmatch(t.split("=")[0])]))
            break
    return found


def test_every_flag_shown_with_a_drlaif_command_is_in_its_help(cli_flags):
    problems, seen = [], 0
    for page in PAGES:
        for lineno, snippet, in_block in _shell_snippets(page.read_text()):
            for name, sub, flags in _drlaif_commands(snippet, in_block):
                seen += 1
                where = f"{_relative(page)}:{lineno}: {name}{' ' + sub if sub else ''}"
                table = cli_flags[name]
                if sub is None:
                    # No subcommand named (`drlaif-train --reward-field`): a flag of them all.
                    options = list(table.values())
                else:
                    alternatives = re.split(r"[|,]", sub.strip("{}"))
                    if not all(a in table for a in alternatives):
                        problems.append(f"{where}: no such subcommand (have {', '.join(table)})")
                        continue
                    options = [table[a] for a in alternatives]
                problems += [f"{where}: {flag} is not in its --help" for flag in flags
                             if not all(flag in o for o in options)]
    assert seen > 50, f"only {seen} drlaif commands found in the pages: is the parser broken?"
    assert not problems, "\n".join(problems)


def test_every_flag_in_inline_code_belongs_to_a_drlaif_command_or_a_named_tool(cli_flags):
    known = set().union(*(flags for table in cli_flags.values() for flags in table.values()))
    problems = []
    for page in PAGES:
        for lineno, snippet, in_block in _shell_snippets(page.read_text()):
            if not in_block:
                problems += [f"{_relative(page)}:{lineno}: {flag} (in `{snippet}`)"
                             for flag in FLAG.findall(snippet) if flag not in known | set(FOREIGN_FLAGS)]
    assert not problems, ("flags that no drlaif command has (a tool's own flag goes in FOREIGN_FLAGS):\n"
                          + "\n".join(problems))


def _defaults_by_flag() -> dict[str, list]:
    from evals.cli import EVALUATIONS
    from evals.config import LabelConfig
    from server.config import ServerSettings
    from trainer.cli import ALGORITHMS

    defaults: dict[str, list] = {}
    for name, info in ServerSettings.model_fields.items():
        defaults.setdefault("--" + name.replace("_", "-"), []).append(info.get_default(call_default_factory=True))
    for cls in {*ALGORITHMS.values(), *(c for c, _ in EVALUATIONS.values()), LabelConfig}:
        for f in dataclasses.fields(cls):
            value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            defaults.setdefault("--" + f.name.replace("_", "-"), []).append(value)
    return defaults


# "`--flag` (300 s)", "`drlaif-train --flag` (default 600 s)", "`--flag`, 2048 by default", "`--flag` is 0.05"
_QUOTED_DEFAULT = re.compile(
    r"`[^`\n]*?(--[a-z][a-z0-9-]*)`(?:\s\((?:default:?\s)?(?P<a>[0-9][0-9.,e-]*)(?:\s?(?P<ua>s|MiB))?\)"
    r"|,?\s(?P<b>[0-9][0-9.,e-]*)(?:\s?(?P<ub>s|MiB))?\sby\sdefault|\sis\s(?P<c>[0-9][0-9.e-]*)[;,.\s])")


def test_a_default_quoted_beside_its_flag_is_the_codes():
    defaults = _defaults_by_flag()
    problems, seen = [], 0
    for page in PAGES:
        for match in _QUOTED_DEFAULT.finditer(page.read_text()):
            flag = match.group(1)
            number = match.group("a") or match.group("b") or match.group("c")
            unit = match.group("ua") or match.group("ub")
            value = float(number.replace(",", "").rstrip(".")) * (2**20 if unit == "MiB" else 1)
            seen += 1
            if flag not in defaults:
                problems.append(f"{_relative(page)}: {match.group(0)!r}: no drlaif command has {flag}")
            elif not any(isinstance(d, int | float) and not isinstance(d, bool) and math.isclose(d, value)
                         for d in defaults[flag]):
                problems.append(f"{_relative(page)}: {match.group(0)!r}: the default is {defaults[flag]}")
    assert seen >= 15
    assert not problems, "\n".join(problems)


def _error_table_hook():
    """docs/hooks/error_table.py, loaded as MkDocs loads it (by path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("error_table_hook", ROOT / "docs" / "hooks" / "error_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _table_rows(markdown: str) -> dict[str, set[int]]:
    """A Markdown error table's rows: each type with its statuses (each type once)."""
    table: dict[str, set[int]] = {}
    for statuses, kinds in re.findall(r"^\|([^|\n]+)\|([^|\n]+)\|", markdown, re.MULTILINE):
        numbers = {int(s) for s in re.findall(r"\b\d{3}\b", statuses)}
        if not numbers:  # the header
            continue
        for kind in re.findall(r"`(\w+)`", kinds):
            assert kind not in table, f"{kind} is in the error table twice"
            table[kind] = numbers
    return table


def test_the_api_page_shows_the_error_table_generated_from_the_list_of_errors(site):
    from drlaif.errors import ERRORS

    hook = _error_table_hook()
    errors = (ROOT / "docs" / "api.md").read_text().split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    assert hook.MARKER.search(errors), "docs/api.md's Errors section has no <!-- error-table --> marker"
    table = _table_rows(hook.error_table())
    assert table == {e.type: set(e.statuses) for e in ERRORS}
    assert {"invalid_json", "unauthorized", "http_error", "body_too_large", "overloaded", "internal_error",
            "backend_stuck", "group_too_small", "replica_unavailable"} <= set(table)
    # The built page has it, in place of the marker.
    built = {row[1] for _, rows in _sections(site / "api" / "index.html") for row in rows if len(row) > 1}
    assert set(table) <= built
    assert "error-table" not in (site / "api" / "index.html").read_text()


def _bypasses(source: str, types: set[str], exceptions: set[str]) -> list[str]:
    """Where ``source`` answers an error without the list in drlaif/errors.py: a literal error
    type or Retry-After header, an error body built by hand (a dict with an "error" key), a
    literal handed to error_response, or a subclass of one of ``exceptions`` of its own."""
    import ast

    found = []
    for node in ast.walk(ast.parse(source)):
        where = f"line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value in types or node.value.lower() == "retry-after":
                found.append(f"{where}: the literal {node.value!r}")
        elif isinstance(node, ast.Dict):
            if any(isinstance(k, ast.Constant) and k.value == "error" for k in node.keys):
                found.append(f"{where}: an error body built by hand")
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in (
                "error_response", "JSONResponse") and node.args and isinstance(node.args[0], ast.Constant):
            found.append(f"{where}: error_response with a literal")
        elif isinstance(node, ast.ClassDef) and {getattr(b, "id", None) for b in node.bases} & exceptions:
            found.append(f"{where}: the exception class {node.name}")
    return found


def test_every_error_the_server_answers_comes_from_the_list_of_errors():
    from drlaif import errors as error_list
    from server import errors

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    types = {e.type for e in error_list.ERRORS}
    assert len(types) == len(error_list.ERRORS), "an error type is declared twice"
    exceptions = {errors.DrlaifError.__name__} | {c.__name__ for c in subclasses(errors.DrlaifError)}
    # The check finds what it looks for: the old readiness answer, body limit and GroupTooSmall.
    old = ('JSONResponse({"error": {"type": "not_ready", "message": m}}, status_code=503, '
           'headers={"Retry-After": "5"})\nerror_response(413, "body_too_large", m)\n'
           'class GroupTooSmall(DrlaifError):\n    code = "group_too_small"\n')
    assert len(_bypasses(old, types, exceptions)) == 7, _bypasses(old, types, exceptions)

    problems = [f"{path.relative_to(ROOT)}: {problem}"
                for path in sorted((ROOT / "server").rglob("*.py")) if path != ROOT / "server" / "errors.py"
                for problem in _bypasses(path.read_text(), types, exceptions)]
    assert not problems, ("errors answered outside the list in drlaif/errors.py:\n" + "\n".join(problems))

    # Each exception is one of the list's errors, with the list's status and code.
    for cls in subclasses(errors.DrlaifError):
        assert cls.error in error_list.ERRORS, cls
        assert (cls.status_code, cls.code) == (cls.error.status, cls.error.type)


# ----------------------------------------------------------------------------- figures quoted twice


def _find(path: str, pattern: str, flags: int = 0) -> str:
    """The first group of ``pattern`` in a repository file (the file must have it)."""
    text = (ROOT / path).read_text()
    found = re.search(pattern, text, flags)
    assert found, f"{path}: no match for {pattern!r}"
    return found.group(1)


def _json_after(page: str, request: str) -> str:
    """The first ```json block after ``request`` on a page, whitespace-normalised."""
    text = (ROOT / page).read_text()
    block = text[text.index(request):].split("```json\n", 1)[1].split("```", 1)[0]
    return " ".join(block.split())


def test_the_score_example_is_the_same_wherever_it_is_quoted():
    request = '"response":"Paris."}]}\''
    readme, api = _json_after("README.md", request), _json_after("docs/api.md", request)
    assert readme == api
    score = json.loads(api)["results"][0]
    # The rubric lab's example scores the same item under a rubric that only renames `general`.
    lab = _find("docs/playground.md", r'"results": \[\{("reward": -?[\d.]+, "score": [\d.]+)')
    assert [float(v) for v in re.findall(r"-?\d+\.\d+", lab)] == [score["reward"], score["score"]]


@pytest.mark.parametrize("name, copies", [
    ("HH-RLHF harmless direct alignment of the embedded labeler (500 pairs)", [
        ("docs/evaluation.md", r"\| direct \(sign of the `/score` reward difference\) \| \*\*([\d.]+)\*\*"),
        ("docs/reward-hacking.md", r"direct\s+alignment of `harmless` is ([\d.]+)"),
    ]),
    ("group-pairwise cost against direct, every pair (groups of 8)", [
        ("docs/benchmarks.md", r"group-pairwise, every pair \(k = 7\) \| 8 \| [\d.]+ \| ([\d.]+) \|"),
        ("docs/groups.md", r"([\d.]+)x the seconds per item of direct scoring for every pair"),
    ]),
    ("group-pairwise cost against direct, 2 opponents", [
        ("docs/benchmarks.md", r"`group_opponents` 2 \| 3 \| [\d.]+ \| ([\d.]+) \|"),
        ("docs/groups.md", r"([\d.]+)x with\s+`group_opponents` 2"),
    ]),
    ("vLLM against transformers: the tests' tolerance per probability", [
        ("tests/test_vllm_backend.py", r"^PROB_TOL = ([\de.-]+)"),
        ("docs/backends.md", r"the tests allow ([\de.-]+) and"),
        ("docs/development.md", r"\(([\de.-]+) per probability,"),
    ]),
    ("vLLM against transformers: the tests' tolerance per reward", [
        ("tests/test_vllm_backend.py", r"^REWARD_TOL = ([\de.-]+)"),
        ("docs/backends.md", r"the tests allow [\de.-]+ and ([\de.-]+)\."),
        ("docs/development.md", r"\s([\de.-]+) per reward, both float32"),
    ]),
    ("Ray Serve replicas against a single server", [
        ("tests/test_ray_serve.py", r'a\["reward"\] == pytest\.approx\(b\["reward"\], abs=([\de.-]+)\)'),
        ("docs/scaling-out.md", r"equals a single `drlaif-server`'s within ([\de.-]+);"),
    ]),
    ("the transformers backend's prefix KV bound, in tokens", [
        ("server/backends/transformers_backend.py", r"^PREFIX_CACHE_TOKENS = ([\d_]+)"),
        ("docs/backends.md", r"at most ([\d,]+) in all"),
    ]),
    ("vLLM's share of the card in the one-GPU Docker stack", [
        ("docker-compose.yml", r"DRLAIF_GPU_MEMORY_UTILIZATION:-([\d.]+)"),
        ("docs/docker.md", r"`DRLAIF_GPU_MEMORY_UTILIZATION=([\d.]+)` of its memory"),
        ("docs/one-gpu.md", r"with ([\d.]+) of the\s+card for vLLM by default"),
    ]),
])
def test_a_figure_quoted_in_several_places_agrees(name, copies):
    # The first copy is the source; another may round it, and must agree to the digits it shows.
    shown = [_find(path, pattern, re.MULTILINE).replace(",", "").replace("_", "") for path, pattern in copies]
    source = float(shown[0])
    for (path, _), text in zip(copies[1:], shown[1:], strict=True):
        digits = len(text.split(".")[1]) if "." in text and "e" not in text else None
        expected = round(source, digits) if digits is not None else source
        assert math.isclose(float(text), expected), f"{name}: {path} says {text}, {copies[0][0]} {shown[0]}"


def test_every_page_points_openrlhf_at_the_server_with_the_same_flag():
    used = {}
    for page in PAGES:
        for flag in re.findall(r"(--[\w.]+) \"?http\S*/get_reward", page.read_text()):
            used.setdefault(flag, []).append(_relative(page))
    assert set(used) == {"--reward.remote_url"}, used


def test_the_test_suite_duration_is_stated_on_the_development_page_only():
    stated = re.compile(r"`make test`[^.]*?\d+\s*min", re.DOTALL)
    assert stated.search((ROOT / "docs" / "development.md").read_text())
    for page in PAGES:
        if page.name != "development.md":
            assert not stated.search(page.read_text()), f"{_relative(page)} states how long `make test` takes"


# ----------------------------------------------------------------------------- the map of the code


def test_the_development_page_maps_every_module():
    text = (ROOT / "docs" / "development.md").read_text()
    block = text.split("## Where the code lives", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    # The block's top-level entries (`server/`, `trainer/`, ...) and the text under each.
    sections = dict(re.findall(r"^(\w+)/(.*?)(?=^\w+/|\Z)", block, re.MULTILINE | re.DOTALL))
    expected = {
        top: sorted(p.name for p in (ROOT / top).rglob("*.py") if p.name != "__init__.py")
        for top in ("drlaif", "server", "trainer", "evals")
    }
    expected["bench"] = sorted(p.name for p in (ROOT / "bench").glob("*.py"))
    expected["scripts"] = sorted(p.name for p in (ROOT / "scripts").iterdir() if p.is_file())
    # ... and every folder of modules below them (`trainer/ppo/`, `server/scoring/`, ...).
    for top in ("drlaif", "server", "trainer", "evals"):
        expected[top] += sorted(f"{p.name}/" for p in (ROOT / top).rglob("*")
                                if p.is_dir() and p.name != "__pycache__" and any(p.glob("*.py")))
    missing = [f"{top}/: {name}" for top, names in expected.items() for name in names
               if not re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", sections.get(top, ""))]
    assert not missing, "docs/development.md's map of the code lacks:\n" + "\n".join(missing)


def test_the_development_page_names_no_module_the_tree_lacks():
    text = (ROOT / "docs" / "development.md").read_text()
    block = text.split("## Where the code lives", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    sections = dict(re.findall(r"^(\w+)/(.*?)(?=^\w+/|\Z)", block, re.MULTILINE | re.DOTALL))
    stale = []
    for top in ("drlaif", "server", "trainer", "evals", "bench"):
        files = {p.name for p in (ROOT / top).rglob("*.py")}
        folders = {p.name for p in (ROOT / top).rglob("*") if p.is_dir()}
        # A module named on its own (`scorer.py`, not `drlaif/errors.py`), and a folder that opens a line.
        stale += [f"{top}/: {name}" for name in re.findall(r"(?<![\w./])(\w+\.py)\b", sections[top])
                  if name not in files]
        stale += [f"{top}/: {name}/" for name in re.findall(r"^  (\w+)/", sections[top], re.MULTILINE)
                  if name not in folders]
    assert not stale, "docs/development.md's map of the code names what is not there:\n" + "\n".join(stale)


# ----------------------------------------------------------------------------- the test files' names


def _marked_slow_as_a_whole(path: Path) -> bool:
    """Whether the module sets ``pytestmark`` to a mark list or mark that includes slow."""
    for node in ast.parse(path.read_text(), filename=path.name).body:
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark"
                                                 for t in node.targets)):
            return "mark.slow" in ast.unparse(node.value)
    return False


def test_the_test_files_follow_the_scheme_the_development_page_states():
    text = (ROOT / "docs" / "development.md").read_text()
    assert "`tests/test_<subject>.py`" in text and "`tests/test_<subject>_e2e.py`" in text
    files = sorted((ROOT / "tests").glob("test_*.py"))
    off_scheme = [p.name for p in files if not re.fullmatch(r"test_[a-z0-9]+(_[a-z0-9]+)*\.py", p.name)
                  or re.search(r"_(units?|integration|pure|tests?)\.py$", p.name)]
    assert not off_scheme, f"not test_<subject>.py or test_<subject>_e2e.py: {off_scheme}"
    e2e_not_slow = [p.name for p in files if p.name.endswith("_e2e.py") and not _marked_slow_as_a_whole(p)]
    assert not e2e_not_slow, f"end-to-end files not marked slow as a whole: {e2e_not_slow}"
