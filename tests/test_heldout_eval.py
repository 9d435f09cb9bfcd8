"""Held-out evaluation's parts that need no policy: `--monitor` values, monitor names and the
number of alarm checks a run plans (the evaluations themselves run in tests/test_overoptimisation_e2e.py)."""

from __future__ import annotations

import pytest

from drlaif.client import RewardClientConfig
from trainer.analysis.heldout_eval import _distinct, monitor_name, planned_checks
from trainer.analysis.monitor_spec import MonitorSpec


def test_monitor_specs():
    spec = MonitorSpec.parse("http://judge:8001/#harmless")
    assert (spec.url, spec.rubric, spec.name, spec.address) == ("http://judge:8001", "harmless", None,
                                                                "judge:8001#harmless")
    assert MonitorSpec.parse("https://a.example").rubric is None
    named = MonitorSpec.parse("big judge = http://judge:8001?x=1#harmless")
    assert (named.name, named.url, named.rubric) == ("big judge", "http://judge:8001?x=1", "harmless")
    for bad in ("judge:8001", "name=judge:8001", "=http://judge:8001", "ftp://judge"):
        with pytest.raises(ValueError, match=r"\[NAME=\]URL\[#rubric\]"):
            MonitorSpec.parse(bad)


def test_a_monitor_without_info_is_named_by_its_address(own_server):
    # A server of one's own may have no GET /info (the docs' example answers 404).
    spec = MonitorSpec.parse(f"{own_server}#strict")
    assert monitor_name(spec, RewardClientConfig(urls=[spec.url])) == spec.address
    given = MonitorSpec.parse(f"rule judge={own_server}")
    assert monitor_name(given, RewardClientConfig(urls=[given.url])) == "rule judge"


def test_monitors_of_the_same_judge_get_their_addresses():
    specs = [MonitorSpec.parse("http://a:1"), MonitorSpec.parse("http://b:2"), MonitorSpec.parse("http://c:3")]
    assert _distinct(["m#general", "m#general", "n#general"], specs) == ["m#general (a:1)", "m#general (b:2)",
                                                                          "n#general"]


@pytest.mark.parametrize("steps, eval_every, checks", [(20, 5, 4), (20, 6, 4), (3, 1, 3), (20, 0, 1), (2, 5, 1)])
def test_planned_checks_count_every_evaluation_after_the_first(steps, eval_every, checks):
    assert planned_checks(steps, eval_every) == checks
