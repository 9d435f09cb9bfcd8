"""Rubrics (constitutions) as data: the YAML format, presets, and prompt rendering."""

from server.rubrics.model import Rubric
from server.rubrics.registry import RubricRegistry

__all__ = ["Rubric", "RubricRegistry"]
