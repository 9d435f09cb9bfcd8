"""The openai backend without a server: its request planning, its reading of answers, its start-up
probes and its errors, against fake inference servers behind httpx's MockTransport.

The fake servers share one model: a next-token distribution over 64 tokens that is a fixed
function of the prompt, so every read has an exact answer to compare with. They differ in
what they return: ``vllm`` (logprob_token_ids, prompt_logprobs, raw log-probabilities),
``processed`` (a forced token masks the others' log-probabilities, as vLLM started with
another logprobs mode does), ``old_vllm`` (no logprob_token_ids: the field is ignored, tokens
are named by text), ``hosted`` (only OpenAI's fields, at most 5 top log-probabilities),
``none`` (no log-probabilities at all). The end-to-end tests run vLLM's own server.
"""

from __future__ import annotations

import asyncio
import json
import math
import random

import httpx
import numpy as np
import pytest

from server.backends.base import GenerationRequest
from server.backends.openai_backend import (
    PROBE_TEXT,
    OpenAIBackend,
    UpstreamError,
    api_urls,
    parse_top_logprobs,
    plan_prompt_reads,
    plan_token_id_reads,
)
from server.config import ServerSettings
from server.scoring import TokenReads

VOCAB = 64
EOS = 63
URL = "http://judge.test:8000/v1"


class CharTokenizer:
    """One token per character '0'..'o' (ids 0..63); other characters are dropped."""

    name_or_path = "char-tokenizer"

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) - 48 for c in text if 0 <= ord(c) - 48 < VOCAB]

    def decode(self, ids) -> str:
        return "".join(chr(48 + i) for i in ids)


TOKENIZER = CharTokenizer()


def logprobs_after(prompt) -> np.ndarray:
    """The fake model: log-probabilities of the next token, a fixed function of the prompt."""
    rng = random.Random(",".join(map(str, prompt)))
    logits = np.array([rng.gauss(0, 2) for _ in range(VOCAB)])
    return logits - np.logaddexp.reduce(logits)


def greedy(prompt, n: int, stop_ids=()) -> tuple[list[int], str]:
    out: list[int] = []
    while len(out) < n:
        token = int(np.argmax(logprobs_after([*prompt, *out])))
        out.append(token)
        if token in stop_ids:
            return out, "stop"
    return out, "length"


class FakeServer:
    """An OpenAI-compatible completions server of one flavour (see the module docstring)."""

    def __init__(self, flavour: str = "vllm", models=("labeler",), max_model_len: int | None = 4096,
                 tokenize: list[int] | None = None):
        self.flavour = flavour
        self.models = models
        self.max_model_len = max_model_len
        self.tokenize = tokenize  # what /tokenize answers (None: the local tokenizer's ids)
        self.bodies: list[dict] = []
        self.fail: Exception | int | None = None  # raise this, or answer this status, from now on
        self.in_flight = self.most_in_flight = 0
        self.delay_s = 0.0

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            return self._answer(request)
        finally:
            self.in_flight -= 1

    def _answer(self, request: httpx.Request) -> httpx.Response:
        if isinstance(self.fail, Exception):
            raise self.fail
        if self.fail is not None:
            return httpx.Response(self.fail, json={"error": {"message": "engine fell over"}})
        path = request.url.path
        if path == "/v1/models":
            data = [{"id": m, **({"max_model_len": self.max_model_len} if self.max_model_len else {})}
                    for m in self.models]
            return httpx.Response(200, json={"object": "list", "data": data})
        body = json.loads(request.content)
        self.bodies.append(body)
        if path == "/tokenize" and self.flavour != "hosted":
            tokens = self.tokenize if self.tokenize is not None else TOKENIZER.encode(body["prompt"])
            return httpx.Response(200, json={"tokens": tokens, "count": len(tokens)})
        if path != "/v1/completions":
            return httpx.Response(404, json={"detail": "Not Found"})
        if self.flavour == "hosted":
            unknown = sorted(set(body) - {"model", "prompt", "max_tokens", "temperature", "top_p", "logprobs",
                                          "seed", "presence_penalty", "frequency_penalty", "stream"})
            if unknown:
                return httpx.Response(400, json={"error": {"message": f"Unrecognized argument: {unknown[0]}"}})
            if (body.get("logprobs") or 0) > 5:
                return httpx.Response(400, json={"error": {"message": "logprobs must be at most 5"}})
        prompts = body["prompt"] if isinstance(body["prompt"][0], list) else [body["prompt"]]
        choices = [self._choice(i, p, body) for i, p in enumerate(prompts)]
        if body.get("stream"):
            return self._stream(choices[0], body)
        return httpx.Response(200, json={"object": "text_completion", "model": body["model"], "choices": choices})

    def _choice(self, index: int, prompt: list[int], body: dict) -> dict:
        n = body.get("max_tokens", 16)
        forced = body.get("allowed_token_ids")
        if forced:
            tokens, reason = [forced[0]] * n, "length"
        else:
            stops = set(body.get("stop_token_ids") or ()) | ({EOS} if self.flavour != "hosted" else set())
            tokens, reason = greedy(prompt, n, stops)
        choice = {"index": index, "text": TOKENIZER.decode([t for t in tokens if t != EOS]),
                  "finish_reason": reason, "stop_reason": None, "logprobs": None}
        if body.get("return_token_ids") and self.flavour != "hosted":
            choice["token_ids"] = tokens
        k = body.get("logprobs")
        if k is not None and self.flavour != "none":
            steps = []
            for s in range(len(tokens)):
                lp = logprobs_after([*prompt, *tokens[:s]])
                if forced and self.flavour == "processed":
                    lp = np.where(np.isin(np.arange(VOCAB), forced), 0.0, -np.inf)
                wanted = body.get("logprob_token_ids") if self.flavour in ("vllm", "processed") else None
                ids = wanted if wanted else list(np.argsort(-lp)[:k])
                by_id = body.get("return_tokens_as_token_ids") and self.flavour in ("vllm", "processed")
                steps.append({(f"token_id:{t}" if by_id else TOKENIZER.decode([t])): max(float(lp[t]), -9999.0)
                              for t in [*ids, tokens[s]]})
            choice["logprobs"] = {"tokens": [TOKENIZER.decode([t]) for t in tokens],
                                  "token_logprobs": [s[next(iter(s))] for s in steps], "top_logprobs": steps}
        if body.get("prompt_logprobs") is not None and self.flavour in ("vllm", "processed", "old_vllm"):
            choice["prompt_logprobs"] = [None] + [
                {str(prompt[i]): {"logprob": float(logprobs_after(prompt[:i])[prompt[i]]), "rank": 1}}
                for i in range(1, len(prompt))]
        return choice

    def _stream(self, choice: dict, body: dict) -> httpx.Response:
        lines = [json.dumps({"choices": [{"index": 0, "text": TOKENIZER.decode([t]), "token_ids": [t],
                                          "finish_reason": None}]}) for t in choice["token_ids"][:-1]]
        last = choice["token_ids"][-1:]
        lines.append(json.dumps({"choices": [{"index": 0, "text": TOKENIZER.decode(last), "token_ids": last,
                                              "finish_reason": choice["finish_reason"]}]}))
        text = "".join(f"data: {line}\n\n" for line in lines) + "data: [DONE]\n\n"
        return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})


def connect(server: FakeServer, **kw) -> OpenAIBackend:
    return OpenAIBackend.connect(URL, TOKENIZER, eos_ids={EOS}, transport=server.transport(), **kw)


def label_reads(prefix: tuple[int, ...]) -> TokenReads:
    """The layout of a 1..10 scale: digits '1'..'9' after the prefix, then '0' after '1'."""
    digits = tuple(range(1, 10))
    return TokenReads((*prefix, 1), ((len(prefix), digits), (len(prefix) + 1, (0,))))


def exact(seq: TokenReads) -> list[np.ndarray]:
    return [logprobs_after(seq.input_ids[:p])[list(c)] for p, c in seq.reads]


def run(coroutine):
    return asyncio.run(coroutine)


# ----------------------------------------------------------------------------- URLs and settings


def test_the_base_url_is_taken_with_or_without_its_v1():
    assert api_urls("http://h:8000/v1") == ("http://h:8000", "http://h:8000/v1")
    assert api_urls("http://h:8000/") == ("http://h:8000", "http://h:8000/v1")
    assert api_urls(" https://api.example.com/openai/v1/ ") == ("https://api.example.com/openai",
                                                                 "https://api.example.com/openai/v1")
    with pytest.raises(ValueError, match="http"):
        api_urls("h:8000")


def test_the_openai_backend_needs_a_base_url():
    with pytest.raises(ValueError, match="--base-url"):
        ServerSettings(backend="openai")
    s = ServerSettings(backend="openai", base_url="http://h:8000", openai_api_key="k")
    assert (s.openai_logprobs, s.openai_max_concurrency, s.openai_timeout_s) == ("auto", 64, 120.0)


# ----------------------------------------------------------------------------- request planning


def test_token_id_reads_pair_a_read_with_the_next_one():
    seq = label_reads((5, 6, 7))
    (request,) = plan_token_id_reads(seq)
    assert request.prompt == (5, 6, 7) and request.forced == 1
    assert request.token_ids == tuple(range(10)) and request.answers == ((0, 0), (1, 1))
    # Without pairing, or for reads that are not adjacent: one request per read, in order of position.
    alone = plan_token_id_reads(seq, pair=False)
    assert [(r.prompt, r.forced, r.answers) for r in alone] == [((5, 6, 7), None, ((0, 0),)),
                                                                ((5, 6, 7, 1), None, ((1, 0),))]
    apart = TokenReads((1, 2, 3, 4), ((4, (9,)), (2, (8, 8, 7))))
    assert [(r.prompt, r.token_ids, r.answers) for r in plan_token_id_reads(apart)] == [
        ((1, 2), (8, 7), ((1, 0),)), ((1, 2, 3, 4), (9,), ((0, 0),))]


def test_token_id_reads_split_many_candidates():
    seq = TokenReads((1, 2), ((2, tuple(range(300))),))
    requests = plan_token_id_reads(seq)
    assert [len(r.token_ids) for r in requests] == [128, 128, 44]
    assert all(r.prompt == (1, 2) and r.answers == ((0, 0),) for r in requests)
    # A pair whose candidates do not fit one request is read one position at a time.
    wide = TokenReads((1, 2, 3), ((2, tuple(range(100))), (3, tuple(range(100, 200)))))
    assert [r.forced for r in plan_token_id_reads(wide)] == [None, None]


def test_prompt_reads_leave_out_prompts_that_a_longer_one_holds():
    seq = label_reads((5, 6, 7))
    prompts, where = plan_prompt_reads(seq)
    # '1' then '0' answers P('1' | prefix) and P('0' | prefix '1'); the other digits one prompt each.
    assert prompts == [(5, 6, 7, 1, 0), *[(5, 6, 7, d) for d in range(2, 10)]]
    assert where == [[0, *range(1, 9)], [0]]
    for (position, candidates), indices in zip(seq.reads, where, strict=True):
        for c, k in zip(candidates, indices, strict=True):
            assert prompts[k][position] == c and prompts[k][:position] == seq.input_ids[:position]


# ----------------------------------------------------------------------------- reading answers


def test_top_logprobs_are_matched_by_id_or_text_and_missing_ones_read_zero():
    choice = {"logprobs": {"tokens": ["a"], "token_logprobs": [-0.5],
                           "top_logprobs": [{"token_id:3": -1.0, "b": -2.0, "x": -3.0, "y": -9999.0}]}}
    texts = {3: "c", 4: "b", 5: "a", 6: "x", 7: "x", 8: "z", 9: "y"}
    got = parse_top_logprobs(choice, [3, 4, 5, 6, 7, 8, 9], texts)
    # 'a' is the chosen token, there even if the top list lacked it; 'x' is two candidates' text:
    # they cannot be told apart and read 0; 'z' is not there; -9999 is JSON's -inf.
    assert got.tolist() == [-1.0, -2.0, -0.5, -math.inf, -math.inf, -math.inf, -math.inf]


@pytest.mark.parametrize("mode", ["token_ids", "prompt"])
def test_exact_modes_read_the_models_own_logprobs(mode):
    server = FakeServer("vllm")
    backend = connect(server, logprobs=mode)
    assert backend.mode == mode and not backend.info.approximate
    batch = [label_reads((5, 6, 7)), label_reads((9, 9)), TokenReads((3, 4, 5), ((3, (1, 2)),))]
    got = run(backend.read_logprobs(batch))
    for seq, values in zip(batch, got, strict=True):
        for g, w in zip(values, exact(seq), strict=True):
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-12)


def test_top_mode_reads_the_top_k_and_nothing_else():
    backend = connect(FakeServer("hosted"), logprobs="top")
    assert backend.mode == "top" and backend.top_k == 5 and backend.info.approximate
    seq = label_reads((5, 6, 7))
    got = run(backend.read_logprobs([seq]))[0]
    for g, w, (position, _) in zip(got, exact(seq), seq.reads, strict=True):
        shown = set(np.argsort(-logprobs_after(seq.input_ids[:position]))[:5])
        candidates = seq.reads[[p for p, _ in seq.reads].index(position)][1]
        want = [w[i] if c in shown else -math.inf for i, c in enumerate(candidates)]
        np.testing.assert_allclose(g, want, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- start-up


@pytest.mark.parametrize(("flavour", "mode", "paired"), [("vllm", "token_ids", True), ("processed", "token_ids", False),
                                                         ("old_vllm", "prompt", None), ("hosted", "top", None)])
def test_auto_picks_the_first_mode_the_server_answers(flavour, mode, paired):
    server = FakeServer(flavour)
    backend = connect(server)
    assert backend.mode == mode
    if paired is not None:  # forced pairs only where they read what single reads do
        assert backend.pair_reads is paired
    assert backend.info.approximate is (mode == "top")
    assert (backend.info.name, backend.info.model, backend.info.continuous_batching) == ("openai", "labeler", True)
    assert backend.info.max_context == 4095  # max_model_len 4096 less the generated token
    seq = label_reads((8, 8, 8))
    if mode != "top":  # a server with forced reads it cannot pair still reads exactly
        for g, w in zip(run(backend.read_logprobs([seq]))[0], exact(seq), strict=True):
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-12)


def test_a_server_without_logprobs_is_refused_naming_what_was_tried():
    with pytest.raises(RuntimeError) as refused:
        connect(FakeServer("none"))
    message = str(refused.value)
    assert URL in message and "no usable log-probabilities" in message
    assert all(f"{mode}:" in message for mode in ("token_ids", "prompt", "top"))
    with pytest.raises(RuntimeError, match="tried top:"):
        connect(FakeServer("none"), logprobs="top")


def test_the_served_model_is_the_only_one_listed_or_the_one_named():
    with pytest.raises(RuntimeError, match=r"serves 2 models \(a, b\); name one with --served-model"):
        connect(FakeServer(models=("a", "b")))
    assert connect(FakeServer(models=("a", "b")), served_model="b").info.model == "b"
    with pytest.raises(RuntimeError, match="does not serve 'c'; it serves a, b"):
        connect(FakeServer(models=("a", "b")), served_model="c")
    server = FakeServer(max_model_len=None)
    assert connect(server, local_context=2048).info.max_context == 2047
    assert all(body.get("model") == "labeler" for body in server.bodies)


def test_a_server_that_tokenises_otherwise_is_refused():
    with pytest.raises(RuntimeError, match="tokenises differently"):
        connect(FakeServer(tokenize=[1, 2, 3]))
    server = FakeServer()
    connect(server)
    assert server.bodies[0] == {"model": "labeler", "prompt": PROBE_TEXT, "add_special_tokens": False}


def test_an_unreachable_server_is_a_startup_error():
    server = FakeServer()
    server.fail = httpx.ConnectError("connection refused")
    with pytest.raises(RuntimeError, match=f"cannot list the models of the inference server at {URL}.*ConnectError"):
        connect(server)


# ----------------------------------------------------------------------------- errors and concurrency


@pytest.mark.parametrize(("fail", "expected"), [
    (503, f"the inference server at {URL}/completions answered 503: engine fell over"),
    (httpx.RemoteProtocolError("Server disconnected without sending a response."),
     f"the inference server at {URL}/completions failed the request: RemoteProtocolError: Server disconnected"),
    (httpx.ReadTimeout("timed out"), f"the inference server at {URL}/completions did not answer within 7s"),
])
def test_upstream_failures_name_the_server_and_what_went_wrong(fail, expected):
    server = FakeServer()
    backend = connect(server, timeout_s=7)
    server.fail = fail
    with pytest.raises(UpstreamError) as failed:
        run(backend.read_logprobs([label_reads((1, 2))]))
    assert str(failed.value).startswith(expected)
    assert backend.failure() is None  # the server may come back


def test_requests_in_flight_are_bounded():
    server = FakeServer()
    backend = connect(server, max_concurrency=3)
    server.delay_s = 0.01
    server.most_in_flight = 0
    run(backend.read_logprobs([label_reads((i, i)) for i in range(12)]))
    assert server.most_in_flight == 3


def test_the_api_key_is_sent_as_a_bearer_token():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(500)

    with pytest.raises(RuntimeError):
        OpenAIBackend.connect(URL, TOKENIZER, api_key="sekrit", transport=httpx.MockTransport(handler))
    assert seen and set(seen) == {"Bearer sekrit"}


# ----------------------------------------------------------------------------- generation


def test_generation_is_greedy_stops_where_asked_and_leaves_out_the_eos():
    server = FakeServer()
    backend = connect(server)
    prompt = (5, 6, 7)
    path, _ = greedy(prompt, 12)
    requests = [GenerationRequest(prompt, 12), GenerationRequest(prompt, 12, stop=((path[3],),)),
                GenerationRequest(prompt, 12, stop=(tuple(path[2:4]),))]
    plain, single, longer = run(backend.generate(requests))
    assert plain.token_ids == tuple(path[:12]) and plain.finish_reason == "length"
    first = path.index(path[3])  # the first occurrence of the stop token ends it
    assert single.token_ids == tuple(path[: first + 1]) and single.finish_reason == "stop"
    assert longer.token_ids == tuple(path[:4]) and longer.finish_reason == "stop"
    bodies = [b for b in server.bodies if b.get("max_tokens") == 12]
    assert [bool(b.get("stream")) for b in bodies] == [False, False, True]  # only a longer stop streams
    assert all(b["temperature"] == 0 and EOS in b["stop_token_ids"] and "seed" not in b for b in bodies)
    sampled = GenerationRequest(prompt, 4, temperature=0.7, seed=11)
    run(backend.generate([sampled]))
    assert server.bodies[-1]["seed"] == 11 and server.bodies[-1]["temperature"] == 0.7


def test_generation_on_a_hosted_api_tokenises_its_text():
    server = FakeServer("hosted")
    backend = connect(server)
    prompt = (5, 6, 7)
    path, _ = greedy(prompt, 6)
    (generation,) = run(backend.generate([GenerationRequest(prompt, 6, stop=(tuple(path[1:3]),))]))
    assert generation.token_ids == tuple(path[:3]) and generation.finish_reason == "stop"
    assert "stop_token_ids" not in server.bodies[-1] and "stream" not in server.bodies[-1]
