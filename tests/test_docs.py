"""The documentation: the site builds strictly, its configuration reference covers every
setting with its default, and the README stays short with its commands up front."""

from __future__ import annotations

import dataclasses
import os
import re
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
