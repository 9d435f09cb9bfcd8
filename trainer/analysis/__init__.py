"""What a training run records and what it means: the metrics log and plots (metrics_log.py),
report.md and the terminal summary (run_report.py), the over-optimisation alarm
(overoptimisation_alarm.py), and the judge's per-step signals (judge_signals.py)."""
