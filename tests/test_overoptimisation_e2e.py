"""End to end: monitor judges, the over-optimisation alarm and dropped samples, in real
`drlaif-train` processes (ppo, and grpo and rloo through trl) against real HTTP reward servers
(the tiny random policy)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Self

import httpx
import pytest

from drlaif.server_process import free_port, wait_until_ready

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(ROOT / "bench"))
from rule_reward_server import doomed, shortest

PROMPTS = 8  # held-out prompts: the alarm's minimum of paired prompts
FAST = {"ppo": ["--batch-size", "8", "--minibatch-size", "8", "--max-new-tokens", "12", "--ppo-epochs", "1",
                "--save-every", "0", "--seed", "1"],
        "grpo": ["--batch-size", "4", "--num-generations", "2", "--max-new-tokens", "12", "--save-every", "0",
                 "--seed", "1"]}
FAST["rloo"] = FAST["grpo"]


class Server:
    """A small reward server subprocess (a fixture script and its arguments)."""

    def __init__(self, script: Path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, str(script), str(self.port), *args])

    def __enter__(self) -> Self:
        wait_until_ready(self.url, self.proc, 60)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()


def train(url: str, out: Path, model: Path, *extra: str, algorithm: str = "ppo") -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "trainer.cli", algorithm, "--reward-url", url, "--output-dir", str(out),
           "--model", str(model), *FAST[algorithm], *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.compat("drlaif-train ppo", "monitors", "works")
@pytest.mark.compat("drlaif-train grpo", "monitors", "works")
@pytest.mark.compat("drlaif-train rloo", "monitors", "works")
@pytest.mark.parametrize("algorithm", ["ppo", "grpo", "rloo"])
def test_alarm_fires_names_the_monitor_opens_the_report_and_stops_the_run(tiny_policy_dir, tmp_path, algorithm):
    # The proxy climbs 0.1 per request it answers, the monitor falls 0.1 per request: the
    # curves of a policy gaming its judge, from the first evaluation on.
    with Server(FIXTURES / "drift_reward_server.py", "0.1", "-0.5") as proxy, \
            Server(FIXTURES / "drift_reward_server.py", "-0.1", "0.5") as monitor:
        out = tmp_path / "run"
        result = train(proxy.url, out, tiny_policy_dir, "--steps", "4", "--eval-every", "1", "--eval-prompts",
                       str(PROMPTS), "--eval-samples", "2", "--alarm-window", "1", "--monitor",
                       f"drifting judge={monitor.url}#helpful", "--stop-on-overoptimisation", algorithm=algorithm)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    name = "drifting judge"  # the name given on the command line
    assert "over-optimisation at step 1" in result.stderr and name in result.stderr, result.stderr[-3000:]
    assert len(jsonl(out / "metrics.jsonl")) == 1  # stopped at the first alarm, after one update
    rows = jsonl(out / "evals.jsonl")
    assert [r["step"] for r in rows] == [0, 1]
    assert rows[0]["alarms"] == [] and [a["monitor"] for a in rows[1]["alarms"]] == [name]
    alarm = rows[1]["alarms"][0]
    assert alarm["proxy"]["ci_low"] > 0 and alarm["monitor_change"]["ci_high"] < 0
    assert math.isfinite(rows[1]["kl"]) and len(rows[1]["proxy"]) == PROMPTS  # each held-out prompt
    report = (out / "report.md").read_text().splitlines()
    assert report[2].startswith("> **Over-optimisation alarm:**") and name in report[2], report[:4]
    assert (out / "overoptimisation.png").stat().st_size > 0 and (out / "final").is_dir()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_early"] == 1 and summary["alarms"][0]["monitor"] == name


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
@pytest.mark.compat("drlaif-train ppo", "monitors", "works")
@pytest.mark.compat("/score", "monitors", "works")
def test_no_alarm_when_the_monitor_is_the_proxy(server, tiny_policy_dir, tmp_path, algorithm):
    # The real embedded labeler as proxy and monitor: the same reads, so a monitor cannot fall
    # while the proxy rises.
    out = tmp_path / "run"
    result = train(server.url, out, tiny_policy_dir, "--steps", "2", "--eval-every", "1", "--eval-prompts", "2",
                   "--eval-samples", "2", "--alarm-window", "1", "--monitor", server.url, "--rubric", "general",
                   "--max-new-tokens", "6", algorithm=algorithm)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = jsonl(out / "evals.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2]
    info = httpx.get(f"{server.url}/info").json()  # a monitor is named for its judge's model and rubric
    name = f"{Path(info['model']).name}#{info['default_rubric']}"
    for r in rows:
        assert r["alarms"] == []
        assert r["monitors"][name] == pytest.approx(r["proxy"], abs=1e-4)
    report = (out / "report.md").read_text()
    assert "Over-optimisation alarm" not in report and "No over-optimisation alarm" in report
    assert f"| {name} | change |" in report  # the evaluations table's column
    for m in jsonl(out / "metrics.jsonl"):  # the judge's signals, from the real labeler's reads
        assert 0.0 <= m["label_entropy"] <= 2.303 and 0.0 < m["label_mass"] <= 1.0, m
        assert "length_reward_corr" in m and m["reward_dropped"] == 0
    assert "## Length and reward" in report


@pytest.mark.compat("drlaif-train ppo", "drop-on-failure", "works")
def test_drop_leaves_out_exactly_the_failed_samples_and_the_cap_stops_the_run(tiny_policy_dir, tmp_path):
    share = 0.25
    with Server(ROOT / "bench" / "rule_reward_server.py", "--rule", "shortest", "--fail-share",
                str(share)) as flaky:
        out = tmp_path / "drop"
        result = train(flaky.url, out, tiny_policy_dir, "--steps", "3", "--eval-prompts", "0",
                       "--on-reward-failure", "drop", "--max-dropped-fraction", "0.9", "--reward-deadline-s", "1")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        rows, samples = jsonl(out / "metrics.jsonl"), jsonl(out / "rollouts.jsonl")
        assert len(rows) == 3
        for m in rows:
            injected = [s for s in samples if s["step"] == m["step"] and doomed(s["response"], share)]
            assert m["reward_dropped"] == len(injected) and m["reward_samples"] == 8, m
        assert sum(m["reward_dropped"] for m in rows) > 0  # the run met failures and rode them out
        for s in samples:  # a dropped sample has no reward anywhere; every other has the server's
            if doomed(s["response"], share):
                assert s["reward"] is None and s["dropped"] is True, s
            else:
                assert s["reward"] == pytest.approx(shortest(s["response"])), s

        capped = tmp_path / "capped"
        result = train(flaky.url, capped, tiny_policy_dir, "--steps", "3", "--eval-prompts", "0",
                       "--on-reward-failure", "drop", "--max-dropped-fraction", "0.0", "--reward-deadline-s", "1")
    assert result.returncode != 0
    assert "--max-dropped-fraction 0" in result.stderr and "saved a resumable checkpoint" in result.stderr, \
        result.stderr[-3000:]
