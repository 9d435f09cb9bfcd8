"""Dataclass fields that document themselves: a configuration field carries its help text in
its metadata, so a command line's ``--help`` and the docs' configuration reference read it from
the one place it is written (``trainer/config.py``, ``evals/config.py``)."""

from __future__ import annotations

from dataclasses import field
from typing import Any


def documented(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with ``default`` and ``help`` (plus any ``kw``) in its metadata. A list
    default is copied for each instance (a default factory)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})
