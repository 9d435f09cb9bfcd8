"""bench/gpu_check.py: the GPU check, run here at its tiny shape on a CPU (a real drlaif-server
subprocess, bf16), and its teacher-forced read of multi-token labels on a model whose
probabilities are known."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from gpu_check import PROB_TOL, REWARD_TOL, bare_distributions, teacher_forced


def test_the_tiny_check_on_a_cpu_passes_and_prints_the_lines_for_the_benchmarks_page(embedded_model_dir):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--shape", "tiny", "--device", "cpu",
                          "--items", "8", "--batch-size", "8", "--repeats", "2"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    lines = dict(re.findall(r"^gpu-check: (.+?)\s{2,}(.+)$", out.stdout, re.MULTILINE))

    def number(name: str) -> float:
        return float(re.match(r"[\d.e+-]+", lines[name]).group())

    assert lines["device"].startswith("CPU") and lines["dtype"].startswith("bfloat16")
    assert lines["shape"].startswith("tiny: hidden 64, 2 layers")
    assert "--reward-cache-items 0" in lines["server flags"] and "--dtype bfloat16" in lines["server flags"]
    assert number("/score items/s") > 0 and number("bare forward items/s") > 0
    assert number("/score / bare forward") > 0 and number("p50 latency, 8-item /score") > 0
    served, bf16_floor = number("max |dp|, /score vs fp32 teacher"), number("max |dp|, bare bf16 vs fp32")
    assert 0 < served <= PROB_TOL and 0 < bf16_floor <= PROB_TOL
    # The server adds nothing to bf16's own error (here both were 8e-3: rounding, not a wrong read).
    assert served <= 2 * bf16_floor + 1e-3
    assert number("max |d reward|, /score vs fp32") <= REWARD_TOL
    # The random labeler's labels are far from equal, so the comparison says something.
    largest = re.search(r"largest per item ([\d.]+) to ([\d.]+)", lines["labels (fp32 teacher)"])
    assert float(largest.group(1)) > 0.15
    assert lines["exactness"] == "PASS"


class FixedModel:
    """A causal LM over 4 tokens ("1", "0", "2", other) whose next-token logits depend only on
    the last input token: after "1" one set, after anything else another."""

    ONE, ZERO, TWO, OTHER = range(4)

    def __init__(self):
        import torch

        self.after_one = torch.tensor([0.3, 1.2, -0.5, 0.1])
        self.otherwise = torch.tensor([1.0, -2.0, 0.4, 0.0])

    def __call__(self, input_ids, logits_to_keep):
        import torch

        rows = [self.after_one if t == self.ONE else self.otherwise for t in input_ids[0].tolist()]
        return SimpleNamespace(logits=torch.stack(rows)[None, -logits_to_keep:])


def test_the_teacher_reads_ten_as_one_then_zero_and_takes_its_mass_from_one():
    model = FixedModel()
    labels = {"1": [model.ONE], "2": [model.TWO], "10": [model.ONE, model.ZERO]}
    first = np.exp(model.otherwise.numpy()) / np.exp(model.otherwise.numpy()).sum()
    zero_after_one = np.exp(model.after_one.numpy())[model.ZERO] / np.exp(model.after_one.numpy()).sum()
    expected = np.array([first[model.ONE] * (1 - zero_after_one), first[model.TWO],
                         first[model.ONE] * zero_after_one])
    dist, mass = teacher_forced(model, [model.OTHER, model.OTHER], labels, "cpu")
    np.testing.assert_allclose(dist, expected / expected.sum(), rtol=1e-6)
    assert mass == pytest.approx(expected.sum(), rel=1e-6)
    # The bare pass's rows (log P of each label's first token, log P("0" | "1")) give the same.
    import torch

    logp_first = torch.log_softmax(model.otherwise, -1)[[model.ONE, model.TWO, model.ONE]]
    logp_zero = torch.log_softmax(model.after_one, -1)[model.ZERO]
    (bare,) = bare_distributions([(logp_first[None], logp_zero[None])], labels)
    np.testing.assert_allclose(bare, dist, rtol=1e-6)
