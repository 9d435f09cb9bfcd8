"""MkDocs hook: the configuration reference pages, generated from the code at build time.

A page that holds the line ``<!-- config-reference: server -->`` gets a table of every field
of ``server.config.ServerSettings`` (flag, environment variable, default, accepted values,
description); ``<!-- config-reference: trainer -->`` gets the trainer's settings from the
config dataclasses of ``trainer.config``, grouped by the ``drlaif-train`` subcommands that
take them. Nothing in these tables is written by hand.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import importlib
import os
import re
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MARKER = re.compile(r"^<!-- config-reference: (\w+) -->$", re.MULTILINE)


# ----------------------------------------------------------------------------- formatting


def format_default(value: Any) -> str:
    """A default as the table shows it: `unset` for None, the value otherwise."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, Path):
        home = str(Path.home())
        text = str(value)
        return f"`{'~' + text[len(home):] if text.startswith(home) else text}`"
    if isinstance(value, list | tuple):
        return " ".join(f"`{v}`" for v in value) or "(none)"
    return f"`{value}`"


def _cell(text: str) -> str:
    """Description text safe inside a Markdown table cell (code spans kept)."""
    text = " ".join(text.split())
    return html.escape(text, quote=False).replace("|", "&#124;").replace("*", r"\*")


def _split_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _values(tp: Any, constraints: list[Any]) -> str:
    """What a setting accepts, in words."""
    base, _ = _split_optional(tp)
    if typing.get_origin(base) is Literal:
        return ", ".join(f"`{v}`" for v in typing.get_args(base))
    if base is bool:
        return "on/off"
    if typing.get_origin(base) is list:
        return f"{_values(typing.get_args(base)[0], [])}, one or more"
    names = {int: "integer", float: "number", str: "text", Path: "path"}
    name = names.get(base, getattr(base, "__name__", "text"))
    if name == "SecretStr":
        name = "text (secret)"
    bounds = []
    for c in constraints:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if getattr(c, attr, None) is not None:
                bounds.append(f"{sign} {getattr(c, attr)}")
    return name + (" " + ", ".join(bounds) if bounds else "")


def _flag(name: str, tp: Any) -> str:
    flag = "--" + name.replace("_", "-")
    base, _ = _split_optional(tp)
    if base is bool:
        return f"`{flag}`, `--no-{flag[2:]}`"
    return f"`{flag}`"


@contextlib.contextmanager
def _without_drlaif_env() -> Iterator[None]:
    """Defaults computed by a factory must not depend on the shell that builds the docs."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("DRLAIF_")}
    for k in saved:
        del os.environ[k]
    try:
        yield
    finally:
        os.environ.update(saved)


# ----------------------------------------------------------------------------- the server


def server_rows() -> list[dict[str, str]]:
    # Reloaded on every build, so that `mkdocs serve` shows an edited config at once.
    settings_cls = importlib.reload(importlib.import_module("server.config")).ServerSettings

    prefix = settings_cls.model_config.get("env_prefix", "")
    rows = []
    with _without_drlaif_env():
        for name, info in settings_cls.model_fields.items():
            default = info.get_default(call_default_factory=True)
            rows.append({
                "name": name,
                "flag": _flag(name, info.annotation),
                "env": f"`{(prefix + name).upper()}`",
                "default": format_default(default),
                "values": _values(info.annotation, list(info.metadata)),
                "description": _cell(info.description or ""),
            })
    return rows


def server_table() -> str:
    lines = ["| flag | environment variable | default | accepts | description |",
             "|---|---|---|---|---|"]
    for r in server_rows():
        lines.append(f"| {r['flag']} | {r['env']} | {r['default']} | {r['values']} | {r['description']} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the trainer


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _dataclass_rows(cls: type, names: list[str]) -> list[dict[str, str]]:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    rows = []
    for name in names:
        f = fields[name]
        default = _default(f)
        rows.append({
            "name": name,
            "flag": _flag(name, hints[name]),
            "key": f"`{name}`",
            "default": format_default(default),
            "values": _values(hints[name], []),
            "description": _cell(f.metadata.get("help", "")),
        })
    return rows


def trainer_sections() -> list[tuple[str, list[dict[str, str]]]]:
    """(title, rows) per group: the settings every subcommand takes, then each config's own."""
    importlib.reload(importlib.import_module("trainer.config"))
    algorithms_by_name = importlib.reload(importlib.import_module("trainer.cli")).ALGORITHMS

    by_class: dict[type, list[str]] = {}
    for algorithm, cls in algorithms_by_name.items():
        by_class.setdefault(cls, []).append(algorithm)
    field_names = {cls: [f.name for f in dataclasses.fields(cls)] for cls in by_class}
    defaults = {cls: {f.name: _default(f) for f in dataclasses.fields(cls)} for cls in by_class}
    first = next(iter(by_class))
    # Shared: a setting every config has, with the same default everywhere.
    common = [n for n in field_names[first]
              if all(n in defaults[cls] and defaults[cls][n] == defaults[first][n] for cls in by_class)]
    sections = [("Every algorithm (" + ", ".join(f"`{a}`" for a in algorithms_by_name) + ")",
                 _dataclass_rows(first, common))]
    for cls, algorithms in by_class.items():
        own = [n for n in field_names[cls] if n not in common]
        if own:
            title = " and ".join(f"`{a}`" for a in algorithms) + " only"
            sections.append((title, _dataclass_rows(cls, own)))
    return sections


def trainer_tables() -> str:
    out = []
    for title, rows in trainer_sections():
        out += [f"### {title}", "", "| flag | YAML key | default | accepts | description |",
                "|---|---|---|---|---|"]
        out += [f"| {r['flag']} | {r['key']} | {r['default']} | {r['values']} | {r['description']} |"
                for r in rows]
        out.append("")
    return "\n".join(out)


GENERATORS = {"server": server_table, "trainer": trainer_tables}


# ----------------------------------------------------------------------------- the hook


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    def replace(match: re.Match[str]) -> str:
        kind = match.group(1)
        if kind not in GENERATORS:
            raise ValueError(f"{page.file.src_path}: unknown config reference {kind!r}")
        return GENERATORS[kind]()

    return MARKER.sub(replace, markdown)
