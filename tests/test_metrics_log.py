"""trainer/analysis/metrics_log.py: metrics.jsonl and rollouts.jsonl of a run, resumed or started
afresh in the same directory."""

from __future__ import annotations

import json


def test_metrics_log_keeps_only_this_runs_steps(tmp_path):
    from trainer.analysis.metrics_log import MetricsLog

    log = MetricsLog(tmp_path)
    for step in (1, 2, 3):
        log.write({"step": step, "reward_mean": 0.1 * step})
        log.write_samples(step, ["p"], ["r"], [0.0])
    MetricsLog(tmp_path).start_at(2)  # resumed from the step-2 checkpoint: step 3 is redone
    assert [r["step"] for r in log.read()] == [1, 2]
    rollouts = (tmp_path / "rollouts.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in rollouts] == [1, 2]
    MetricsLog(tmp_path).start_at(0)  # a fresh run into the same directory
    assert log.read() == [] and (tmp_path / "rollouts.jsonl").read_text() == ""
