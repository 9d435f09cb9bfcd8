"""GPU check: drlaif-server's transformers backend on a 7B-shaped labeler in bfloat16.

One run, on one machine, measures and checks:
  - /score items/s (one request of --items items, reward cache off) against a bare batched
    forward pass over the same token ids (the server's /render), in the same bf16 model
    shape and batch size, in this process; and their ratio;
  - the p50 latency of that request over --repeats rounds (64 items by default);
  - exactness: the server's label distributions and rewards against a teacher-forced read
    of the same weights in float32 on the same device (P(label) by drlaif's rule: the
    product of the label's token probabilities, less the mass of the longer labels that
    continue it, so P(1) = P("1") - P("1","0")), within bf16's error (see PROB_TOL);
and prints lines for the benchmarks page. It exits 1 when the exactness check fails.

The labeler is built here from its config with random weights: timing needs the shape,
not the training, and nothing is downloaded. --shape 7b is Llama-2-7B's shape (hidden
4096, 32 layers of 32 heads, MLP 11008); --shape tiny is a 2-layer toy for a CPU. Its
tokenizer is the embedded labeler's (SmolLM2's, vocabulary 49152, digits one token each).
The model is saved as safetensors to a temporary folder (13.8 GB at 7b), served
from there by `drlaif-server --model DIR --backend transformers --dtype bfloat16`, and
removed at the end.

On a bare GPU machine (torch, transformers and accelerate; no network), carry two things
beside the checkout, about 7 MB together:

  # here, in the checkout, with network:
  .venv/bin/python bench/gpu_check.py --export-tokenizer gpu-check/tokenizer
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d gpu-check/wheels \\
      fastapi==0.136.3 starlette==1.10.0 uvicorn==0.55.0 pydantic==2.14.4 pydantic-core==2.50.5 \\
      pydantic-settings==2.16.3 python-dotenv==1.2.4 annotated-types==0.8.0 \\
      typing-inspection==0.4.5 typing-extensions==4.16.0 annotated-doc==0.0.7
  # there, in the checkout (python 3.12; the wheels go to a temporary folder, nothing is installed):
  python3 bench/gpu_check.py --shape 7b --wheels gpu-check/wheels --tokenizer gpu-check/tokenizer

The wheels are the server's packages that such a machine lacks (the versions are this
checkout's .venv; httpx, PyYAML, numpy, jinja2 and prometheus-client are usually there).
Without --wheels they must be importable already; `pip install --no-index --find-links
gpu-check/wheels fastapi uvicorn pydantic-settings` installs them for good instead. The
7b run needs about 28 GB of GPU memory at once (the server's bf16 copy beside this
process's) and takes a few minutes, most of it writing and loading the weights.

On a CPU: python bench/gpu_check.py --shape tiny --device cpu
"""

from __future__ import annotations

import argparse
import atexit
import gc
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Tolerances of the exactness check, server (bf16) against the teacher (fp32, same weights).
# bf16 keeps 8 significant bits, so every rounding is off by up to 2^-8 (0.4%) relative. The
# server rounds the inputs of every matmul and the residual stream after every layer to bf16
# (sums accumulate in fp32); the errors compound with depth. Measured on random Llamas built
# as here (hidden 1024, CPU): the final hidden state is 2% off at 8 layers and 3-4% at 32,
# which puts logits of std 1 off by up to about 0.08. A label probability p moves by
# p * (dz - E[dz]): the largest move over 8 items at 32 layers was 0.010. 0.03 is three times
# that, and what the backend's own first-batch check allows in bf16
# (server/backends/transformers_backend.py). A reward, 2 * (E[score] - 1) / 9 - 1, moves by
# (2/9) * sum (v - 5.5) * dp <= sum |dp|, about 1 to 3 times the largest |dp|: 0.05. A wrong
# read (a position off by one, another token) moves probabilities by about as much as they
# differ from one position to the next, 0.1 and more here. The run also prints the error of
# the bare bf16 forward pass against the same teacher: bf16's own error on this model, which
# the server's should match.
PROB_TOL = 0.03
REWARD_TOL = 0.05

SHAPES = {
    # Llama-2-7B's shape (Mistral-7B's differs in 8 KV heads and MLP 14336).
    "7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 32, "max_position_embeddings": 4096},
    "tiny": {"hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "max_position_embeddings": 4096},
}
# The server's packages; the rest it needs (httpx, yaml, numpy, prometheus_client) a GPU image has.
SERVER_PACKAGES = ("fastapi", "starlette", "uvicorn", "pydantic", "pydantic_settings")
PREFIX = "gpu-check:"


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def result(name: str, value: str) -> None:
    """A line for the benchmarks page (and for tests/test_gpu_check.py to read)."""
    print(f"{PREFIX} {name:<34} {value}", flush=True)


def install_wheels(wheels: Path) -> str:
    """pip-install every wheel in ``wheels`` into a temporary folder (no index, no network,
    nothing installed for good) and put it first on this process's path; returns the folder."""
    found = sorted(glob.glob(str(wheels / "*.whl")))
    if not found:
        sys.exit(f"gpu_check: no wheels in {wheels}")
    target = tempfile.mkdtemp(prefix="drlaif-gpu-check-site-")
    atexit.register(shutil.rmtree, target, ignore_errors=True)
    say(f"installing {len(found)} wheels from {wheels} into {target}")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--disable-pip-version-check", "--target", target, *found], check=True)
    sys.path.insert(0, target)
    return target


def check_server_packages() -> None:
    import importlib.util

    missing = [name for name in SERVER_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        sys.exit(f"gpu_check: drlaif-server needs {', '.join(missing)}: carry them as wheels and pass "
                 "--wheels DIR (see this script's docstring)")


def tokenizer_source(path: str | None) -> str:
    if path:
        return path
    from drlaif.embedded_model import embedded_model_dir

    try:
        return str(embedded_model_dir())
    except RuntimeError as exc:
        sys.exit(f"gpu_check: {exc}\nwithout the embedded labeler, export its tokenizer where it is installed "
                 "(--export-tokenizer DIR) and pass --tokenizer DIR here")


def build_labeler(shape: str, tokenizer, device: str, out: Path):
    """A Llama labeler of ``shape`` with random weights, in bf16 on ``device``, saved to ``out``
    (safetensors, with the tokenizer). Returns the model, which stays loaded."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    dims = SHAPES[shape]
    config = LlamaConfig(
        **dims, vocab_size=len(tokenizer), rms_norm_eps=1e-5, tie_word_embeddings=False,
        # std 1/sqrt(hidden) (0.016 at 7b, near Llama's 0.02): a normalised hidden state then
        # gives logits of std about 1, so the ten labels get clearly unequal probabilities.
        initializer_range=dims["hidden_size"] ** -0.5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    started = time.perf_counter()
    say(f"building the {shape} labeler with random weights on {device} (bf16)")
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    say(f"built {params / 1e9:.2f}B parameters in {time.perf_counter() - started:.1f}s; saving to {out}")
    started = time.perf_counter()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    size = sum(f.stat().st_size for f in out.iterdir()) / 2**30
    say(f"saved {size:.2f} GiB in {time.perf_counter() - started:.1f}s")
    return model, params


def batches(seqs: list, size: int) -> list[list]:
    return [seqs[i:i + size] for i in range(0, len(seqs), size)]


def teacher_forced(model, input_ids: list[int], label_token_ids: dict[str, list[int]], device: str):
    """Label probabilities (renormalised over the labels, in the labels' numeric order) and
    their total mass by plain teacher forcing, unpadded, one sequence at a time: each label's
    tokens are fed after the input, P_seq(label) is the product of their conditional
    probabilities, and a label's own mass excludes the labels that continue it by one more
    token (drlaif's rule: P(1) = P_seq("1") * (1 - P("0" | "1")) = P_seq("1") - P_seq("1", "0"))."""
    import numpy as np
    import torch

    paths = {label: tuple(ids) for label, ids in label_token_ids.items()}
    # Every context a label token is read after, longest first: one forward covers its prefixes.
    contexts = {p[:k] for p in paths.values() for k in range(len(p))}
    logp: dict[tuple[int, ...], torch.Tensor] = {}
    for context in sorted(contexts, key=len, reverse=True):
        if context in logp:
            continue
        ids = torch.tensor([[*input_ids, *context]], device=device)
        with torch.inference_mode():
            logits = model(input_ids=ids, logits_to_keep=len(context) + 1).logits[0]
        rows = torch.log_softmax(logits.double(), -1).cpu()
        for k in range(len(context) + 1):
            logp[context[:k]] = rows[k]

    def p_seq(path: tuple[int, ...]) -> float:
        return float(np.exp(sum(float(logp[path[:k]][path[k]]) for k in range(len(path)))))

    mass = {}
    for label, path in paths.items():
        following = {o[len(path)] for o in paths.values() if len(o) > len(path) and o[:len(path)] == path}
        mass[label] = p_seq(path) - sum(p_seq((*path, t)) for t in following)
    values = np.array([mass[label] for label in sorted(mass, key=int)])
    return values / values.sum(), float(values.sum())


def bare_distributions(out, label_ids: dict[str, list[int]]):
    """The label distributions of :func:`run`'s bare forward pass (one row per item), by drlaif's
    rule for labels that are single digits but "10" ("1" then "0"); None for other labels."""
    import numpy as np

    labels = list(label_ids)
    one = labels.index("1")
    if label_ids["10"] != [label_ids["1"][0], label_ids["10"][-1]] or any(
            len(ids) != 1 for label, ids in label_ids.items() if label != "10"):
        return None
    rows = []
    for first, zero in out:
        p = np.exp(first.double().numpy())  # P(first token) per label, in label order
        p_zero = np.exp(zero.double().numpy())
        for row, pz in zip(p, p_zero, strict=True):
            row = row.copy()
            row[labels.index("10")] = row[one] * pz
            row[one] *= 1 - pz
            rows.append(row / row.sum())
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--items", type=int, default=64, help="items of the timed /score request")
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto (cuda when there is one)")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="sequences per forward pass, the server's (--max-batch-items) and the bare one's")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds after a warm-up (median)")
    parser.add_argument("--check-items", type=int, default=None,
                        help="items read again by the fp32 teacher (default: all)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the embedded labeler's)")
    parser.add_argument("--export-tokenizer", type=Path, default=None, metavar="DIR",
                        help="only save the embedded labeler's tokenizer to DIR, to carry to a GPU machine")
    parser.add_argument("--wheels", type=Path, default=None, metavar="DIR",
                        help="wheels of the server's packages (fastapi, uvicorn, pydantic-settings, ...), "
                             "installed into a temporary folder first")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where to save the model (kept); default: a temporary folder, removed at the end")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra drlaif-server flag (repeatable), e.g. --server-arg=--no-prefix-caching")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    pythonpath = [str(ROOT)]
    if args.wheels:
        pythonpath.insert(0, install_wheels(args.wheels))
    from transformers import AutoTokenizer

    if args.export_tokenizer:
        AutoTokenizer.from_pretrained(tokenizer_source(args.tokenizer)).save_pretrained(args.export_tokenizer)
        say(f"saved the tokenizer to {args.export_tokenizer}")
        return 0
    check_server_packages()

    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cpu" and args.shape == "7b":
        say("warning: the 7b shape on a CPU takes hours; --shape tiny is the CPU's check")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source(args.tokenizer))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="drlaif-gpu-check-"))
    try:
        return run(args, device, tokenizer, workdir, pythonpath)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def run(args, device: str, tokenizer, workdir: Path, pythonpath: list[str]) -> int:
    import torch

    model_dir = workdir / f"labeler-{args.shape}"
    model_dir.mkdir(parents=True, exist_ok=True)
    model, params = build_labeler(args.shape, tokenizer, device, model_dir)
    served = serve_and_time(args, model, tokenizer, model_dir, device, pythonpath)
    del model  # the teacher's fp32 copy comes from the saved files, as the server's did
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    errors = check_exactness(args, served, model_dir, device)
    return report(args, device, tokenizer, params, served, errors)


def serve_and_time(args, model, tokenizer, model_dir: Path, device: str, pythonpath: list[str]) -> dict:
    """Serve ``model_dir`` and time /score against the bare forward pass of ``model`` (the same
    weights, in this process) in interleaved rounds; the server's last answer, its /render and
    the bare pass's label distributions come back too."""
    import httpx
    import torch
    from score_throughput import interleaved, left_pad, make_items

    from drlaif.server_process import ServerProcess
    from server.backends.base import common_prefix_length

    body = {"items": make_items(args.items)}
    # The reward cache off, so that every round computes; one forward pass holds --batch-size
    # items (the token bound is set far above what these items need).
    server_args = ["--model", str(model_dir), "--backend", "transformers", "--device", device,
                   "--dtype", "bfloat16", "--reward-cache-items", "0", "--max-batch-items", str(args.batch_size),
                   "--max-batch-tokens", str(args.batch_size * 1024), "--log-level", "warning", *args.server_arg]
    env = {"PYTHONPATH": os.pathsep.join([*pythonpath, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    say(f"starting drlaif-server {' '.join(server_args)}")
    started = time.perf_counter()
    with ServerProcess(*server_args, env=env, ready_timeout=1800) as server:
        say(f"server ready in {time.perf_counter() - started:.1f}s")
        client = httpx.Client(base_url=server.url, timeout=1800)
        info = client.get("/info").raise_for_status().json()
        rendered = client.post("/render", json=body).raise_for_status().json()["results"]
        label_ids = rendered[0]["label_token_ids"]
        first, ten = [ids[0] for ids in label_ids.values()], label_ids["10"]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        prepared = []
        # The server's sequences: each input and "1", read after the input and after the "1".
        for chunk in batches([r["input_ids"] + ten[:1] for r in rendered], args.batch_size):
            ids, mask = left_pad(chunk, pad)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            prepared.append((ids.to(device), mask.to(device), positions.to(device)))

        @torch.inference_mode()
        def bare_forward():
            """What the server computes for these items, without it: one padded bf16 forward per
            batch, logits at the two read positions only."""
            out = []
            for ids, mask, positions in prepared:
                logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=2).logits
                logp = torch.log_softmax(logits.float(), -1)
                out.append((logp[:, 0, first].cpu(), logp[:, 1, ten[1]].cpu()))
            return out

        times: list[float] = []

        def score():
            started = time.perf_counter()
            client.post("/score", json=body).raise_for_status()
            times.append(time.perf_counter() - started)

        say(f"timing: {args.repeats} interleaved rounds after a warm-up, {args.items} items each")
        score_s, bare_s = interleaved([score, bare_forward], args.repeats)
        answer = client.post("/score", json=body).raise_for_status().json()
        bare = bare_distributions(bare_forward(), label_ids)
        # The backend turns reuse off (with a warning) if its first check finds the paths apart.
        reuse = "--no-prefix-caching" not in server_args and "reuse is off" not in server.output(1 << 20)
    return {"info": info, "reuse": reuse, "rendered": rendered, "answer": answer, "bare": bare, "server_args": server_args,
            "score_s": score_s, "bare_s": bare_s, "latencies": sorted(times[1:]),  # times[0]: the warm-up
            "tokens": sum(len(r["input_ids"]) for r in rendered) / len(rendered),
            "shared": common_prefix_length([r["input_ids"] for r in rendered])}


def check_exactness(args, served: dict, model_dir: Path, device: str) -> dict:
    """The server's distributions and rewards against the fp32 teacher, item by item; the
    bare bf16 pass's distributions against it too (bf16's own error on this model)."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    check = served["answer"]["results"][: args.check_items]
    say(f"exactness: loading the fp32 teacher from {model_dir}, reading {len(check)} items")
    torch.set_float32_matmul_precision("highest")  # no TF32: the teacher is plain float32
    teacher = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, device_map=device).eval()
    scale = served["answer"]["scale"]
    values = np.arange(scale["min"], scale["max"] + 1, dtype=np.float64)
    prob = reward = mass_err = floor = 0.0
    seen = []
    for k, (r, got) in enumerate(zip(served["rendered"], check, strict=False)):
        dist, mass = teacher_forced(teacher, r["input_ids"], r["label_token_ids"], device)
        expected = 2 * (float(dist @ values) - scale["min"]) / (scale["max"] - scale["min"]) - 1
        prob = max(prob, float(np.max(np.abs(np.array(got["distribution"]) - dist))))
        reward = max(reward, abs(got["reward"] - expected))
        mass_err = max(mass_err, abs(got["label_mass"] - mass) / mass)
        if served["bare"] is not None:
            floor = max(floor, float(np.max(np.abs(served["bare"][k] - dist))))
        seen.append((float(dist.max()), float(dist.min()), mass, float(dist[-1]), expected))
    return {"items": len(check), "labels": len(values), "prob": prob, "reward": reward, "mass": mass_err,
            "floor": floor if served["bare"] is not None else None, "seen": seen}


def report(args, device: str, tokenizer, params: int, served: dict, errors: dict) -> int:
    """Print the lines for the benchmarks page; 0 when the exactness check passed, else 1."""
    import numpy as np
    import torch

    n, info, latencies = args.items, served["info"], served["latencies"]
    score_s, bare_s = served["score_s"], served["bare_s"]
    top, low, masses, tens, rewards = zip(*errors["seen"], strict=True)
    flat = max(t - lo for t, lo in zip(top, low, strict=True)) < 1e-3
    passed = errors["prob"] <= PROB_TOL and errors["reward"] <= REWARD_TOL and not flat
    device_name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    dims = SHAPES[args.shape]
    print(flush=True)
    result("device", f"{device_name} ({info['device']})")
    result("dtype", f"{info['dtype']} (server and bare forward); teacher float32")
    result("shape", f"{args.shape}: hidden {dims['hidden_size']}, {dims['num_hidden_layers']} layers, "
                    f"{dims['num_attention_heads']} heads ({dims['num_key_value_heads']} KV), MLP "
                    f"{dims['intermediate_size']}, vocabulary {len(tokenizer)}; {params / 1e9:.2f}B parameters, "
                    "random weights")
    result("items", f"{n}, {served['tokens']:.0f} labeler tokens each on average ({served['shared']} of them "
                    f"the rubric's shared prefix); batches of {args.batch_size}; median of {args.repeats} rounds")
    result("server flags", " ".join(["--model", "DIR", *served["server_args"][2:]])
           + f" (shared-prefix reuse {'on' if served['reuse'] else 'off'})")
    result("/score items/s", f"{n / score_s:.1f} (one {n}-item request, reward cache off)")
    result("bare forward items/s", f"{n / bare_s:.1f} (same ids, bf16, batches of {args.batch_size}, in-process)")
    result("/score / bare forward", f"{bare_s / score_s:.2f}")
    result(f"p50 latency, {n}-item /score", f"{np.median(latencies) * 1000:.0f} ms "
                                           f"(min {latencies[0] * 1000:.0f}, max {latencies[-1] * 1000:.0f})")
    result("labels (fp32 teacher)", f"probabilities {min(low):.3f} to {max(top):.3f}, largest per item "
                                    f"{min(top):.2f} to {max(top):.2f}; P(10) up to {max(tens):.1e}; label mass "
                                    f"{min(masses):.1e} to {max(masses):.1e}; rewards {min(rewards):+.3f} to "
                                    f"{max(rewards):+.3f}")
    result("max |dp|, /score vs fp32 teacher", f"{errors['prob']:.2e} (tolerance {PROB_TOL}; {errors['items']} "
                                               f"items x {errors['labels']} labels)")
    result("max |dp|, bare bf16 vs fp32", "n/a (labels other than the digits)" if errors["floor"] is None
           else f"{errors['floor']:.2e} (bf16's own error on this model)")
    result("max |d reward|, /score vs fp32", f"{errors['reward']:.2e} (tolerance {REWARD_TOL})")
    result("max relative |d label_mass|", f"{errors['mass']:.2e} (reported, not checked)")
    if flat:
        result("FAIL", "the teacher's label distributions are all flat: the check would prove nothing")
    result("exactness", "PASS" if passed else "FAIL")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
