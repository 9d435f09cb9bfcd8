"""Built-in rubric presets plus rubrics from a user's YAML file."""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import yaml
from pydantic import ValidationError

from server.errors import UnknownRubric
from server.rubrics.model import Rubric


def _merged(base: dict, override: dict) -> dict:
    """``base`` with ``override``'s keys: mappings merge key by key, other values replace."""
    out = dict(base)
    for key, value in override.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _derived(entry: object, known: Mapping[str, Rubric], what: str) -> object:
    """An entry with ``extends: <name>`` is that rubric with the entry's keys over its own
    (nested blocks such as ``compare`` merge key by key)."""
    if not isinstance(entry, dict) or "extends" not in entry:
        return entry
    fields = dict(entry)
    base_name = fields.pop("extends")
    base = known.get(base_name) if isinstance(base_name, str) else None
    if base is None:
        raise ValueError(f"{what} extends {base_name!r}, which is not defined before it; have {sorted(known)}")
    return _merged(base.model_dump(exclude_unset=True), fields)


def _parse(data: object, source: str, known: Mapping[str, Rubric] | None = None) -> list[Rubric]:
    """A YAML document is one rubric, a list of rubrics, or ``{rubrics: [...]}``; ``known``
    are the rubrics an entry may extend (besides those before it in the document)."""
    if isinstance(data, dict) and "rubrics" in data:
        data = data["rubrics"]
    entries = data if isinstance(data, list) else [data]
    known = dict(known or {})
    rubrics = []
    for i, entry in enumerate(entries):
        what = f"{source}: rubric #{i + 1}"
        try:
            rubric = Rubric.model_validate(_derived(entry, known, what))
        except ValidationError as exc:
            raise ValueError(f"{what} is invalid:\n{exc}") from exc
        rubrics.append(rubric)
        known[rubric.name] = rubric
    return rubrics


# No number in a rubric needs more characters; a longer integer is refused where it is written
# (with its line) rather than parsed: Python refuses decimal ones past 4300 digits with advice
# about sys.set_int_max_str_digits, and hexadecimal ones of any length would parse.
MAX_INT_CHARS = 100


class _RubricLoader(yaml.SafeLoader):
    """YAML's safe loader (plain data only) for rubrics, refusing what would otherwise pass
    silently or fail without a line: a key given twice in one mapping (the second would
    replace the first) and an integer longer than MAX_INT_CHARS."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, _ in node.value:
                # A merge key (<<) may repeat keys it merges in; those the entry writes may not.
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found key {key_node.value!r} twice; give each key once", key_node.start_mark)
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        if len(node.value) > MAX_INT_CHARS:
            raise yaml.constructor.ConstructorError(
                None, None, f"an integer of {len(node.value)} characters; a rubric's numbers have at most "
                f"{MAX_INT_CHARS}", node.start_mark)
        return super().construct_yaml_int(node)


_RubricLoader.add_constructor("tag:yaml.org,2002:int", _RubricLoader.construct_yaml_int)


def _load_yaml(text: str, loader: type[_RubricLoader] = _RubricLoader) -> object:
    """YAML text as plain data; yaml.YAMLError (with its line) or ValueError when it is not a
    rubric's YAML."""
    try:
        return yaml.load(text, Loader=loader)  # a SafeLoader: builds plain data only
    except RecursionError:  # nesting deeper than the parser's stack
        raise ValueError("it nests deeper than a rubric does") from None


class _NoAliasLoader(_RubricLoader):
    """The rubric loader without aliases (``*name``, ``<<: *name``): text that anyone may send
    must not expand, as a few hundred characters of nested aliases do, into a structure whose
    validation takes exponential time."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not accepted here; write the "
                                              "value out", self.peek_event().start_mark)
        return super().compose_node(parent, index)


def parse_rubric(text: str, known: Mapping[str, Rubric], source: str = "rubric_yaml") -> Rubric:
    """One rubric from YAML text sent over HTTP (the playground's rubric lab), validated as an
    entry of a rubrics file is: it may extend one of ``known`` by name. ValueError, with the
    reason in the words the server uses at startup, when the text is not YAML (or uses
    aliases), holds other than one rubric, or does not validate."""
    try:
        data = _load_yaml(text, _NoAliasLoader)
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: a value YAML cannot build (a date 2024-13-01)
        raise ValueError(f"{source} is not valid YAML: {exc}") from None
    rubrics = _parse(data, source, known)
    if len(rubrics) != 1:
        raise ValueError(f"{source} holds {len(rubrics)} rubrics; give exactly one")
    return rubrics[0]


def load_presets() -> dict[str, Rubric]:
    """The built-in rubrics; a file whose name ends in ``-reasoned.yaml`` (loaded after the
    others) derives the reasoned variants of the presets."""
    presets: dict[str, Rubric] = {}
    files = [f for f in resources.files("server.rubrics.presets").iterdir() if f.name.endswith(".yaml")]
    for file in sorted(files, key=lambda f: (f.name.endswith("-reasoned.yaml"), f.name)):
        for rubric in _parse(_load_yaml(file.read_text()), f"preset {file.name}", presets):
            presets[rubric.name] = rubric
    return presets


def load_file(path: Path, known: Mapping[str, Rubric] | None = None) -> list[Rubric]:
    """A user's rubrics; an entry may extend one of ``known`` (the presets) by name."""
    try:
        data = _load_yaml(Path(path).read_text())
    except (OSError, yaml.YAMLError, ValueError) as exc:  # ValueError: not UTF-8, or a value YAML cannot build
        raise ValueError(f"cannot read rubrics file {path}: {exc}") from exc
    return _parse(data, str(path), known)


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
            rubrics.update({r.name: r for r in load_file(user_file, rubrics)})
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
