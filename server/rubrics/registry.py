"""Built-in rubric presets plus rubrics from a user's YAML file."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml
from pydantic import ValidationError

from server.errors import UnknownRubric
from server.rubrics.model import Rubric


def _parse(data: object, source: str) -> list[Rubric]:
    """A YAML document is one rubric, a list of rubrics, or ``{rubrics: [...]}``."""
    if isinstance(data, dict) and "rubrics" in data:
        data = data["rubrics"]
    entries = data if isinstance(data, list) else [data]
    rubrics = []
    for i, entry in enumerate(entries):
        try:
            rubrics.append(Rubric.model_validate(entry))
        except ValidationError as exc:
            raise ValueError(f"{source}: rubric #{i + 1} is invalid:\n{exc}") from exc
    return rubrics


def load_presets() -> dict[str, Rubric]:
    presets = {}
    for file in sorted(resources.files("server.rubrics.presets").iterdir(), key=lambda f: f.name):
        if file.name.endswith(".yaml"):
            for rubric in _parse(yaml.safe_load(file.read_text()), f"preset {file.name}"):
                presets[rubric.name] = rubric
    return presets


def load_file(path: Path) -> list[Rubric]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read rubrics file {path}: {exc}") from exc
    return _parse(data, str(path))


class RubricRegistry:
    """Rubrics by name: the presets, then a user's file adding or overriding them."""

    def __init__(self, rubrics: dict[str, Rubric], default: str):
        if default not in rubrics:
            raise ValueError(f"default rubric {default!r} is not defined; have {sorted(rubrics)}")
        self._rubrics = rubrics
        self.default = default

    @classmethod
    def load(cls, user_file: Path | None = None, default: str = "general") -> RubricRegistry:
        rubrics = load_presets()
        if user_file is not None:
            rubrics.update({r.name: r for r in load_file(user_file)})
        return cls(rubrics, default)

    @property
    def names(self) -> list[str]:
        return sorted(self._rubrics)

    def get(self, name: str | None) -> Rubric:
        name = name or self.default
        try:
            return self._rubrics[name]
        except KeyError:
            raise UnknownRubric(f"unknown rubric {name!r}; available: {', '.join(self.names)}") from None

    def __iter__(self):
        return iter(self._rubrics.values())
