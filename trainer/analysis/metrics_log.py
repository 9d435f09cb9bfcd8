"""Per-step metrics: metrics.jsonl, evaluations: evals.jsonl, optional TensorBoard, and the plots
(curves.png per step; overoptimisation.png, each judge's held-out reward against the KL)."""

from __future__ import annotations

import json
from pathlib import Path


class MetricsLog:
    """Appends one JSON line per step to OUTPUT_DIR/metrics.jsonl (only on the main process)."""

    def __init__(self, output_dir: Path, tensorboard: bool = False, enabled: bool = True):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.enabled = enabled
        self._tb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

            self._tb = SummaryWriter(str(Path(output_dir) / "tb"))

    def write(self, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        if self._tb is not None:
            for key, value in metrics.items():
                if key != "step" and value is not None:  # an undefined statistic (None) is no point
                    self._tb.add_scalar(key, value, metrics["step"])

    def write_samples(self, step: int, prompts: list, responses: list[str], rewards: list[float | None]) -> None:
        """Every rollout with the reward the server returned for it (OUTPUT_DIR/rollouts.jsonl); a
        sample dropped without reward has ``"reward": null, "dropped": true``."""
        if not self.enabled:
            return
        with self.path.with_name("rollouts.jsonl").open("a") as f:
            for prompt, response, reward in zip(prompts, responses, rewards, strict=True):
                row = {"step": step, "prompt": prompt, "response": response, "reward": reward}
                if reward is None:
                    row["dropped"] = True
                f.write(json.dumps(row) + "\n")

    def write_eval(self, row: dict) -> None:
        """One evaluation (trainer/analysis/overoptimisation_alarm.py: eval_row) as a line of
        OUTPUT_DIR/evals.jsonl."""
        if not self.enabled:
            return
        with self.path.with_name("evals.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")

    def read_evals(self) -> list[dict]:
        path = self.path.with_name("evals.jsonl")
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def start_at(self, step_done: int) -> None:
        """Drop what an earlier run logged past ``step_done``: all of it for a fresh run, the
        steps after the checkpoint for a resumed one, so the files describe this run only."""
        if not self.enabled:
            return
        for path in (self.path, self.path.with_name("rollouts.jsonl"), self.path.with_name("evals.jsonl")):
            if path.exists():
                kept = [line for line in path.read_text().splitlines()
                        if line.strip() and json.loads(line).get("step", 0) <= step_done]
                path.write_text("".join(line + "\n" for line in kept))

    def read(self) -> list[dict[str, float]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def plot(self) -> Path:
        """PNG of reward (mean +- std, and each principle's mean under a constitution), KL,
        response length and the judge's signals (within-group length-reward correlation, label
        entropy) per step, next to metrics.jsonl; and overoptimisation.png when evaluations exist."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.read()
        steps = [r["step"] for r in rows]
        mean = [r["reward_mean"] for r in rows]
        std = [r["reward_std"] for r in rows]
        fig, (ax_r, ax_k, ax_l, ax_j) = plt.subplots(1, 4, figsize=(18, 4))
        ax_r.plot(steps, mean, marker="o", label="reward (server)")
        ax_r.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                          alpha=0.2)
        # A constitution's principles, one curve each (reward_principle_<name> in metrics.jsonl).
        for key in dict.fromkeys(k for r in rows for k in r if k.startswith("reward_principle_")):
            ax_r.plot(steps, [r.get(key, float("nan")) for r in rows], linestyle="--",
                      label=key.removeprefix("reward_principle_"))
        if any(k.startswith("reward_principle_") for r in rows for k in r):
            ax_r.legend(fontsize=8)
        ax_r.set(xlabel="step", ylabel="reward", title="Reward per step (mean ± std)")
        ax_k.plot(steps, [r["kl"] for r in rows], marker="o", color="tab:red")
        ax_k.set(xlabel="step", ylabel="KL(policy || reference) per sequence", title="KL to reference")
        ax_l.plot(steps, [r.get("response_length_mean", 0.0) for r in rows], marker="o", color="tab:green")
        ax_l.set(xlabel="step", ylabel="tokens", title="Response length")
        ax_j.plot(steps, [_num(r.get("length_reward_corr")) for r in rows], marker="o", color="tab:purple",
                  label="length-reward corr. (within groups)")
        ax_j.plot(steps, [_num(r.get("label_entropy")) for r in rows], marker="s", color="tab:gray",
                  label="label entropy (nats)")
        ax_j.axhline(0.0, color="black", linewidth=0.5)
        ax_j.set(xlabel="step", title="Judge signals")
        ax_j.set_ylim(bottom=-1.05)
        ax_j.legend(fontsize=8)
        for ax in (ax_r, ax_k, ax_l, ax_j):
            ax.grid(alpha=0.3)
        fig.tight_layout()
        out = self.path.with_name("curves.png")
        fig.savefig(out, dpi=100)
        plt.close(fig)
        self.plot_overoptimisation()
        return out

    def plot_overoptimisation(self) -> Path | None:
        """PNG of the proxy's and each monitor's held-out mean reward against the KL to the
        reference at each evaluation (Gao et al.'s picture), with alarms marked; None without
        evaluations."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.read_evals()
        if not rows:
            return None
        kl = [r["kl"] for r in rows]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.plot(kl, [_num(r["proxy_summary"]["mean"]) for r in rows], marker="o", label="proxy (optimised)")
        for name in dict.fromkeys(n for r in rows for n in r.get("monitor_summary", {})):
            ax.plot(kl, [_num(r.get("monitor_summary", {}).get(name, {}).get("mean")) for r in rows],
                    marker="s", linestyle="--", label=f"monitor {name}")
        for r in rows:
            ax.annotate(str(r["step"]), (r["kl"], _num(r["proxy_summary"]["mean"])), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
            if r.get("alarms"):
                ax.axvline(r["kl"], color="tab:red", alpha=0.5, linestyle=":")
        ax.set(xlabel="KL(policy || reference) per held-out response, nats", ylabel="held-out mean reward",
               title="Proxy and monitors against KL (steps annotated; red: alarm)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        out = self.path.with_name("overoptimisation.png")
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return out

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _num(value: float | None) -> float:
    """A plottable number: None (undefined, or no reward) becomes a gap."""
    return float("nan") if value is None else float(value)
