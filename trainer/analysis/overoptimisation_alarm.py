"""Monitor judges and the over-optimisation alarm.

A monitor is a second judge (another server, model or rubric) that scores the held-out
responses at every evaluation and is never optimised. Reward-model over-optimisation (Gao et
al. 2022) shows as the proxy's held-out score rising while the monitor's falls.

The alarm rule, checked at every evaluation k >= 1 for each monitor: take the evaluation
``window`` points earlier (or the first one, j = max(0, k - window)); on the same held-out
prompts, pair each prompt's mean reward at j and at k. The alarm fires when the proxy's paired
change has a 95% bootstrap interval entirely above zero (it clearly rose) and the monitor's
has one entirely below zero (it clearly fell). Both intervals must exclude zero, so two flat
noisy curves almost never fire; comparing against a point ``window`` evaluations back, not
the best one so far, keeps the choice of reference free of the noise it is tested against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from drlaif.stats import PairedGain, paired_bootstrap


@dataclass(frozen=True)
class MonitorSpec:
    """One monitor judge: a server URL and the rubric it scores with (its default when None)."""

    url: str
    rubric: str | None
    name: str

    @classmethod
    def parse(cls, spec: str) -> MonitorSpec:
        """``URL`` or ``URL#rubric``; the name is host:port, plus ``#rubric`` when given."""
        url, _, rubric = spec.strip().partition("#")
        url = url.rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"monitor {spec!r}: expected URL or URL#rubric, with an http(s) URL")
        return cls(url, rubric or None, parts.netloc + (f"#{rubric}" if rubric else ""))


@dataclass
class EvalPoint:
    """One evaluation: each held-out prompt's mean reward under the proxy and each monitor
    (None where the reward could not be had), and the policy's KL to the reference there."""

    step: int
    kl: float
    proxy: list[float | None]
    monitors: dict[str, list[float | None]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"step": self.step, "kl": self.kl, "proxy": self.proxy, "monitors": self.monitors}

    @classmethod
    def from_dict(cls, row: dict) -> EvalPoint:
        return cls(row["step"], row["kl"], row["proxy"], row.get("monitors", {}))


def paired_change(before: Sequence[float | None], after: Sequence[float | None]) -> PairedGain | None:
    """Paired bootstrap change over the prompts scored at both points (None when none was)."""
    pairs = [(b, a) for b, a in zip(before, after, strict=True) if b is not None and a is not None]
    if not pairs:
        return None
    return paired_bootstrap([b for b, _ in pairs], [a for _, a in pairs])


@dataclass(frozen=True)
class Alarm:
    """The proxy rose and a monitor fell, both beyond their 95% intervals, between two evaluations."""

    step: int
    since_step: int
    monitor: str
    proxy: PairedGain
    monitor_change: PairedGain

    def message(self) -> str:
        return (f"over-optimisation at step {self.step}: the proxy's held-out reward rose by {self.proxy} since "
                f"step {self.since_step} while monitor {self.monitor} fell by {self.monitor_change} "
                "(95% paired-bootstrap intervals): the policy is gaming the proxy")

    @classmethod
    def from_dict(cls, row: dict) -> Alarm:
        return cls(row["step"], row["since_step"], row["monitor"], PairedGain(**row["proxy"]),
                   PairedGain(**row["monitor_change"]))

    def as_dict(self) -> dict:
        return {"step": self.step, "since_step": self.since_step, "monitor": self.monitor,
                "proxy": self.proxy.as_dict(), "monitor_change": self.monitor_change.as_dict(),
                "message": self.message()}


def check_alarms(points: Sequence[EvalPoint], window: int) -> list[Alarm]:
    """The alarms of the latest evaluation (see the module docstring for the rule)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if len(points) < 2:
        return []
    latest, reference = points[-1], points[max(0, len(points) - 1 - window)]
    proxy = paired_change(reference.proxy, latest.proxy)
    if proxy is None or not proxy.ci_low > 0:
        return []
    alarms = []
    for name, values in latest.monitors.items():
        if name not in reference.monitors:
            continue
        change = paired_change(reference.monitors[name], values)
        if change is not None and change.ci_high < 0:
            alarms.append(Alarm(latest.step, reference.step, name, proxy, change))
    return alarms


def eval_row(points: Sequence[EvalPoint], alarms: Sequence[Alarm]) -> dict:
    """The evals.jsonl row of the latest evaluation: the KL, and each judge's mean with its
    paired change since the first evaluation; per-prompt values for later pairing."""
    first, latest = points[0], points[-1]

    def judge(before: Sequence[float | None], after: Sequence[float | None]) -> dict:
        values = [v for v in after if v is not None]
        change = paired_change(before, after)
        return {"mean": sum(values) / len(values) if values else None,
                "change": change.as_dict() if change else None}

    return {**latest.as_dict(), "since_step": first.step,
            "proxy_summary": judge(first.proxy, latest.proxy),
            "monitor_summary": {name: judge(first.monitors.get(name, [None] * len(values)), values)
                                for name, values in latest.monitors.items()},
            "alarms": [a.as_dict() for a in alarms]}
