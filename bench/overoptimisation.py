"""Does the over-optimisation alarm fire when a policy games its judge? A demo on a laptop.

Trains the embedded policy (SmolLM2-135M-Instruct) with drlaif's PPO against a deliberately
gameable proxy (bench/rule_reward_server.py; by default ``terse``: the shorter the
answer, the higher the reward, one word best) with the real embedded labeler as a
monitor judge, evaluating every ``--eval-every`` steps on held-out prompts. Prints the step at
which the alarm fired (or that it did not), the proxy and monitor curves against the KL, and
where the plot is. ``--control`` also runs the same training with the embedded labeler as both
proxy and monitor, where no alarm must fire.

Run (20 PPO steps at learning rate 5e-4 without a KL budget, about 10 minutes on 2 CPU cores):

    python bench/overoptimisation.py [--steps 20] [--eval-every 5] [--rule terse] [--target-kl 0] [--control]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from drlaif.server_process import ServerProcess, free_port, wait_until_ready


def run(proxy: str, monitor: str, out: Path, args: argparse.Namespace) -> dict:
    """One `drlaif-train ppo` run; returns its evaluations and alarms."""
    cmd = [sys.executable, "-m", "trainer.cli", "ppo", "--reward-url", proxy, "--monitor", monitor,
           "--output-dir", str(out), "--steps", str(args.steps), "--eval-every", str(args.eval_every),
           "--eval-prompts", str(args.eval_prompts), "--eval-samples", str(args.eval_samples),
           "--alarm-window", str(args.alarm_window), "--seed", str(args.seed), "--save-every", "0",
           "--learning-rate", str(args.learning_rate), "--rubric", "general", "--target-kl", str(args.target_kl),
           "--kl-coef", str(args.kl_coef), "--warmup-steps", str(args.warmup_steps)]
    print(f"[bench] {' '.join(cmd[2:])}", flush=True)
    started = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"[bench] training failed ({result.returncode}):\n{result.stderr[-4000:]}")
    rows = [json.loads(line) for line in (out / "evals.jsonl").read_text().splitlines() if line.strip()]
    return {"rows": rows, "seconds": time.perf_counter() - started, "out": out}


def show(title: str, res: dict) -> None:
    rows = res["rows"]
    monitors = list(dict.fromkeys(n for r in rows for n in r["monitor_summary"]))
    print(f"\n{title} ({res['seconds']:.0f} s; {res['out']})")
    print("step     KL  proxy  " + "  ".join(f"monitor {m}" for m in monitors))
    for r in rows:
        cells = [f"{r['monitor_summary'][m]['mean']:+.3f}" for m in monitors]
        flag = "  ALARM" if r["alarms"] else ""
        print(f"{r['step']:>4} {r['kl']:6.3f} {r['proxy_summary']['mean']:+.3f}  " + "  ".join(cells) + flag)
    fired = [a for r in rows for a in r["alarms"]]
    if fired:
        print(f"alarm first fired at step {fired[0]['step']}: {fired[0]['message']}")
    else:
        print("no alarm fired")
    print(f"plot: {res['out'] / 'overoptimisation.png'}; report: {res['out'] / 'report.md'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eval-every", type=int, default=5)
    # All 60 shipped held-out prompts: the embedded labeler sees the exploit as a fall of a few
    # hundredths, which 16 prompts cannot tell from noise at the alarm's corrected level.
    parser.add_argument("--eval-prompts", type=int, default=64)
    parser.add_argument("--eval-samples", type=int, default=2)
    parser.add_argument("--alarm-window", type=int, default=4, help="4: each evaluation against the first")
    # terse: the exploit is a one-"word" answer, which the labeler rates below an honest one. (With
    # shortest the policy learns the empty answer, which the embedded labeler rates as it rates
    # the starting policy's answers: a monitor it cannot see fall.)
    parser.add_argument("--rule", default="terse", choices=["terse", "shortest", "keyword"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, default=5e-4,
                        help="the trainer's; above its default (1e-4), so that 20 steps go far enough into the "
                        "exploit for the embedded labeler, which rates most answers alike, to see it")
    # Unconstrained by default: the demo shows what the alarm catches when nothing holds the policy
    # near its reference (the trainer's defaults, a 4-nat budget after 10 warm-up steps, would
    # keep 20 steps from getting far into the exploit).
    parser.add_argument("--target-kl", type=float, default=0.0, help="the trainer's KL budget (0: none)")
    parser.add_argument("--kl-coef", type=float, default=0.05, help="the trainer's (fixed) KL coefficient")
    parser.add_argument("--warmup-steps", type=int, default=0, help="the trainer's learning-rate warm-up")
    parser.add_argument("--control", action="store_true",
                        help="also train against the embedded labeler as proxy and monitor")
    parser.add_argument("--output-dir", type=Path, default=None)
    args = parser.parse_args()
    out = args.output_dir or Path(tempfile.mkdtemp(prefix="drlaif-overopt-"))

    port = free_port()
    proxy = subprocess.Popen([sys.executable, str(HERE / "rule_reward_server.py"), str(port), "--rule", args.rule])
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", proxy, 60)
        with ServerProcess("--max-wait-ms", "5") as labeler:
            gamed = run(f"http://127.0.0.1:{port}", labeler.url, out / "gameable", args)
            show(f"proxy: the gameable '{args.rule}' rule; monitor: the embedded labeler", gamed)
            if args.control:
                control = run(labeler.url, labeler.url, out / "control", args)
                show("proxy and monitor: the embedded labeler", control)
    finally:
        proxy.kill()
        proxy.wait()


if __name__ == "__main__":
    main()
