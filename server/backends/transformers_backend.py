"""The reference backend: a Hugging Face causal LM run with torch.

One padded forward pass per batch. Sequences are left-padded so that every read sits
a fixed distance from the end; the model is asked for logits at only those distances
(``logits_to_keep``), so the vocabulary projection runs on a handful of positions
instead of every token.

Shared-prefix reuse: every item of a rubric starts with the same trusted tokens (system
preamble, chat-template header, the instructions before the first slot), which the
scorer marks as ``TokenReads.shared_prefix``. Their KV is computed once per distinct
prefix, kept in a small LRU, and the batch runs only the suffixes, attending to that KV
expanded over the batch. Positions and masks are those of the whole sequence, so reads
equal the plain path's to float rounding. The first batch that uses a prefix is also run
the plain way and compared; a model whose results differ, or that cannot take a KV cache
of plain full-attention layers (sliding windows, recurrent state), is served by the
plain path from then on. Once reuse has passed that check, a failure on its path (out of
memory) fails only its batch, and reuse stays on.

Generation (:meth:`TransformersBackend.generate`) is a plain decoding loop on the KV
cache: all requests as one left-padded batch (attention mask, positions counted over real
tokens, as in the reads); greedy rows take the argmax, sampled rows draw from the plain
softmax at their temperature with a generator seeded by their own seed, so that their
tokens depend on nothing else in the batch (up to float rounding of a padded batch). A row
leaves the batch at EOS, its first stop sequence or its own ``max_tokens``. The model's
generation config (repetition penalty, top-k, ...) plays no part, as on vLLM. The loop
holds the model for ``DECODE_CHUNK`` steps at a time, so that label reads never wait for a
whole rationale.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from server.backends.base import (
    BackendInfo,
    Generation,
    GenerationRequest,
    check_generation_fits,
    common_prefix_length,
    eos_token_ids,
    finish_generation,
    resolve_dtype,
    stop_end,
)
from server.scoring import TokenReads

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Shorter shared prefixes are not worth a separate KV pass.
MIN_SHARED_PREFIX = 16
# Prefix KV kept, in tokens (each prefix counted whole): the rubric forms in use and a request's
# prompt groups (8 groups of 500-token prompts: 4,000); about 0.4 GB for the embedded labeler.
PREFIX_CACHE_TOKENS = 8192
# Padded tokens per batched pass over new prefixes (a request's prompt groups), at most half
# the LRU so that the rows a pass computes are still kept when their suffixes are read.
PREFILL_BATCH_TOKENS = PREFIX_CACHE_TOKENS // 2
# A batched pass over new prefixes computes its padding too. Its rows are sorted by length, and
# a pass ends where padding would pass this share of its real tokens: prompts of 230-386 tokens
# in one pass are a fifth padding, and a pass of a few rows costs the same per token.
PREFILL_MAX_PADDING = 0.1
# How far the prefix path's probabilities may sit from the plain path's on the first
# check before it is turned off: float rounding, far below anything a reward shows.
_CHECK_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 1e-2}
# Decode steps per hold of the model: a label read waits at most this long behind generation.
DECODE_CHUNK = 8


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class TransformersBackend:
    """Log-probability reads with ``transformers.AutoModelForCausalLM``."""

    def __init__(self, model_path: str, *, model_name: str, device: str = "auto", dtype: str = "auto",
                 trust_remote_code: bool = False, prefix_reuse: bool = True):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = resolve_device(device)
        torch_dtype = _DTYPES[resolve_dtype(dtype, device)]
        started = time.perf_counter()
        log.info("loading %s on %s (%s)", model_name, device, str(torch_dtype).removeprefix("torch."))
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=torch_dtype, trust_remote_code=trust_remote_code
        ).to(device)
        self.model.eval()
        self.device = torch.device(device)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.tokenizer.eos_token_id or 0)
        self.eos_ids = eos_token_ids(self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id)
        self.info = BackendInfo(
            name="transformers",
            model=model_name,
            dtype=str(torch_dtype).removeprefix("torch."),
            device=device,
            max_context=int(getattr(self.model.config, "max_position_embeddings", 0) or 0),
        )
        # The batcher already runs one batch at a time; the lock keeps direct callers honest.
        self._lock = threading.Lock()
        self.prefix_reuse = prefix_reuse
        self._prefix_kv: collections.OrderedDict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = \
            collections.OrderedDict()
        self._prefix_checked = False
        log.info("loaded %s in %.1fs", model_name, time.perf_counter() - started)

    async def read_logprobs(self, batch: Sequence[TokenReads]) -> list[list[np.ndarray]]:
        return await asyncio.to_thread(self.forward, batch)

    @torch.inference_mode()
    def forward(self, batch: Sequence[TokenReads]) -> list[list[np.ndarray]]:
        """Synchronous batched read; see :meth:`Backend.read_logprobs`."""
        for seq in batch:
            for position, _ in seq.reads:
                if not 0 < position <= seq.num_tokens:
                    raise ValueError(f"read position {position} outside a sequence of {seq.num_tokens} tokens")
        out: list[list[np.ndarray] | None] = [None] * len(batch)
        with self._lock:
            groups = self._by_prefix(batch)
            prefixes = [p for p in groups if p]
            self._share_common_prefix(prefixes)
            self._prefill_prefixes(prefixes)
            for prefix, rows in groups.items():
                sub = [batch[i] for i in rows]
                results = self._read_with_prefix(sub, prefix) if prefix else self._read(sub, ())
                for i, result in zip(rows, results, strict=True):
                    out[i] = result
        return out

    def reused_prefix(self, seq: TokenReads) -> int:
        """How many leading tokens of ``seq`` a batched read takes from the prefix KV instead of
        computing them (0: none; the sequence runs whole)."""
        # A read at position p needs the state at p - 1 computed in this pass.
        shared = min([seq.shared_prefix, *(p - 1 for p, _ in seq.reads)])
        return shared if self.prefix_reuse and shared >= MIN_SHARED_PREFIX else 0

    def computed_tokens(self, seq: TokenReads) -> int:
        """The tokens of ``seq`` a batched read computes: all but its reused prefix. The scorer's
        micro-batcher fills a batch's token budget with these, so that a batch of a prompt
        group's inputs holds as many items as the suffixes it really runs allow."""
        return seq.num_tokens - self.reused_prefix(seq)

    def _by_prefix(self, batch: Sequence[TokenReads]) -> dict[tuple[int, ...], list[int]]:
        """Rows of the batch grouped by the shared prefix they can reuse (() for none)."""
        groups: dict[tuple[int, ...], list[int]] = collections.defaultdict(list)
        for i, seq in enumerate(batch):
            groups[tuple(seq.input_ids[:self.reused_prefix(seq)])].append(i)
        return groups

    def _read_with_prefix(self, batch: Sequence[TokenReads], prefix: tuple[int, ...]) -> list[list[np.ndarray]]:
        try:
            kv = self._kv_of(prefix)
            results = self._read(batch, prefix, kv)
        except Exception as exc:
            # Reuse that has passed its check fails only transiently (out of memory): the batch
            # fails and reuse stays on. Before the check, a model that cannot run on a reused KV
            # cache raises here while the plain path works: then it is served the plain way.
            if self.model is None or self._prefix_checked:
                raise  # closed under a running batch (shutdown), or transient
            plain = self._read(batch, ())  # raises too when the failure was not reuse's
            log.warning("shared-prefix reuse is off for %s: this model cannot run on a reused KV cache (%s)",
                        self.info.model, exc)
            self.prefix_reuse = False
            return plain
        if not self._prefix_checked:
            self._prefix_checked = True
            plain = self._read(batch, ())
            diff = max(float(np.max(np.abs(np.exp(a) - np.exp(b))))
                       for r, q in zip(results, plain, strict=True) for a, b in zip(r, q, strict=True))
            if diff > _CHECK_TOLERANCE.get(self.model.dtype, 1e-4):
                log.warning("shared-prefix reuse is off for %s: its reads differ from the plain path by %.2g",
                            self.info.model, diff)
                self.prefix_reuse = False
                return plain
            log.info("shared-prefix reuse on for %s (checked against the plain path: max |dp| %.1e)",
                     self.info.model, diff)
        return results

    def _share_common_prefix(self, prefixes: list[tuple[int, ...]]) -> None:
        """Several groups (a constitution's items: one group per item, its principles the rows)
        that start alike: compute their common start once, so each group's own prefix KV is
        computed on top of it (see :meth:`_kv_of`)."""
        if len(prefixes) < 2 or not self.prefix_reuse:
            return
        common = common_prefix_length(prefixes)
        if common >= MIN_SHARED_PREFIX and all(len(p) > common for p in prefixes):
            # _read_with_prefix meets the same error and falls back, so none is raised here.
            with contextlib.suppress(Exception):
                self._kv_of(prefixes[0][:common])

    def _prefill_prefixes(self, prefixes: list[tuple[int, ...]]) -> None:
        """The KV of several new prefixes (a GRPO step's prompt groups) in batched passes instead
        of one batch-1 pass each: rows right-padded, so that a row's own tokens never attend to
        its padding, each on the kept prefix they all extend; each row's KV is then kept as
        :meth:`_kv_of` would have computed it alone (equal to float rounding)."""
        if not (self.prefix_reuse and self._prefix_checked):
            return  # the first use goes through _kv_of and its check against the plain path
        missing = [p for p in prefixes if p not in self._prefix_kv]
        by_base: dict[tuple[int, ...], list[tuple[int, ...]]] = collections.defaultdict(list)
        for prefix in missing:
            by_base[self._longest_kept(prefix)].append(prefix)
        for base, group in by_base.items():
            group.sort(key=len)
            chunk: list[tuple[int, ...]] = []
            real = 0  # the chunk's tokens past base, without padding
            for prefix in group:
                width, rows = len(prefix) - len(base), len(chunk) + 1  # sorted: this row is the widest
                # A pass and everything it keeps must fit the prefix LRU, or it would evict its
                # own rows; and its padding stays within PREFILL_MAX_PADDING of its real tokens.
                if chunk and (rows * len(prefix) > PREFILL_BATCH_TOKENS
                              or rows * width > (1 + PREFILL_MAX_PADDING) * (real + width)):
                    self._prefill_chunk(base, chunk)
                    chunk, real = [], 0
                chunk.append(prefix)
                real += width
            self._prefill_chunk(base, chunk)

    def _prefill_chunk(self, base: tuple[int, ...], prefixes: list[tuple[int, ...]]) -> None:
        if len(prefixes) < 2:
            return  # _kv_of computes a lone prefix
        from transformers import DynamicCache

        width = max(map(len, prefixes)) - len(base)
        input_ids = torch.full((len(prefixes), width), self.pad_id, dtype=torch.long)
        for row, prefix in enumerate(prefixes):
            input_ids[row, : len(prefix) - len(base)] = torch.tensor(prefix[len(base):], dtype=torch.long)
        past = None
        if base:
            self._prefix_kv.move_to_end(base)
            past = DynamicCache(ddp_cache_data=[(k.expand(len(prefixes), -1, -1, -1), v.expand(len(prefixes), -1, -1, -1))
                                                for k, v in self._prefix_kv[base]])
        # _read_with_prefix meets any error here again in _kv_of, and handles it there.
        with contextlib.suppress(Exception):
            cache = self.model(input_ids=input_ids.to(self.device),
                               position_ids=torch.arange(len(base), len(base) + width, device=self.device)[None],
                               past_key_values=past, use_cache=True, logits_to_keep=1).past_key_values
            layers = cache.layers
            for row, prefix in enumerate(prefixes):
                self._keep(prefix, [(layer.keys[row : row + 1, :, : len(prefix)].clone(),
                                     layer.values[row : row + 1, :, : len(prefix)].clone()) for layer in layers])

    def _longest_kept(self, prefix: tuple[int, ...]) -> tuple[int, ...]:
        """The longest kept prefix that ``prefix`` strictly extends (() for none)."""
        return max((kept for kept in self._prefix_kv if len(kept) < len(prefix) and prefix[: len(kept)] == kept),
                   key=len, default=())

    def _keep(self, prefix: tuple[int, ...], kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self._prefix_kv[prefix] = kv
        while len(self._prefix_kv) > 1 and sum(map(len, self._prefix_kv)) > PREFIX_CACHE_TOKENS:
            self._prefix_kv.popitem(last=False)

    def _kv_of(self, prefix: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, the keys and values of ``prefix`` alone (batch 1), computed once, and on
        top of the longest kept prefix of it when there is one."""
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        kv = self._prefix_kv.get(prefix)
        if kv is None:
            base = self._longest_kept(prefix)
            past = None
            if base:
                self._prefix_kv.move_to_end(base)
                # The kept tensors are never written: the layers concatenate onto them.
                past = DynamicCache(ddp_cache_data=list(self._prefix_kv[base]))
            cache = self.model(input_ids=torch.tensor([prefix[len(base):]], device=self.device),
                               position_ids=torch.arange(len(base), len(prefix), device=self.device)[None],
                               past_key_values=past, use_cache=True).past_key_values
            layers = getattr(cache, "layers", None)
            if not layers or any(type(layer) is not DynamicLayer for layer in layers):
                raise TypeError(f"its KV cache is {type(cache).__name__} with layers other than full attention")
            kv = [(layer.keys, layer.values) for layer in layers]
            self._keep(prefix, kv)
        self._prefix_kv.move_to_end(prefix)
        return kv

    def _read(self, batch: Sequence[TokenReads], prefix: tuple[int, ...],
              kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> list[list[np.ndarray]]:
        """One forward over the batch's tokens after ``prefix``, on ``kv`` (the prefix's KV)."""
        shared = len(prefix)
        width = max(seq.num_tokens for seq in batch) - shared
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), shared + width), dtype=torch.long)
        mask[:, :shared] = 1
        # A read at position p predicts token p from the hidden state at p - 1, i.e.
        # (len - p + 1) places from the end of the (left-padded) row.
        distances: set[int] = set()
        for row, seq in enumerate(batch):
            n = seq.num_tokens - shared
            input_ids[row, width - n :] = torch.tensor(seq.input_ids[shared:], dtype=torch.long)
            mask[row, shared + width - n :] = 1
            distances.update(seq.num_tokens - position + 1 for position, _ in seq.reads)
        keep = sorted(distances, reverse=True)  # ascending column order
        column = {d: i for i, d in enumerate(keep)}
        # Positions count real tokens only, so a padded row sees the positions it would alone.
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
        cache = None
        if kv is not None:
            from transformers import DynamicCache

            # Expanded views: the layers concatenate new keys onto them, never write into them.
            cache = DynamicCache(ddp_cache_data=[(k.expand(len(batch), -1, -1, -1), v.expand(len(batch), -1, -1, -1))
                                                 for k, v in kv])
        logits = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=position_ids.to(self.device),
            past_key_values=cache,
            logits_to_keep=torch.tensor([width - d for d in keep], device=self.device),
            use_cache=cache is not None,
        ).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
        return [[logprobs[row, column[seq.num_tokens - position + 1], list(candidates)].numpy().astype(np.float64)
                 for position, candidates in seq.reads]
                for row, seq in enumerate(batch)]

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """See :meth:`Backend.generate`. The model is held for at most ``DECODE_CHUNK`` steps at
        a time, so label reads queued behind a long rationale run between its chunks."""
        check_generation_fits(requests, self.info.max_context)
        unique = list(dict.fromkeys(requests))  # an identical request has the identical answer
        decoding = await asyncio.to_thread(self._start_decoding, unique)
        while not decoding.finished:
            await asyncio.to_thread(self._decode, decoding, DECODE_CHUNK)
        done = dict(zip(unique, decoding.generations(self.eos_ids), strict=True))
        return [done[r] for r in requests]

    def generate_sync(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """:meth:`generate` for callers without an event loop (scripts, tests)."""
        return asyncio.run(self.generate(requests))

    @torch.inference_mode()
    def _start_decoding(self, requests: Sequence[GenerationRequest]) -> _Decoding:
        """Prefill: one forward over the left-padded prompts, keeping their KV cache."""
        width = max(len(r.prompt_ids) for r in requests)
        input_ids = torch.full((len(requests), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for row, request in enumerate(requests):
            input_ids[row, width - len(request.prompt_ids):] = torch.tensor(request.prompt_ids, dtype=torch.long)
            mask[row, width - len(request.prompt_ids):] = 1
        # Positions count real tokens only, so a padded row sees the positions it would alone.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with self._lock:
            out = self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                             position_ids=positions.to(self.device), use_cache=True, logits_to_keep=1)
        generators = []
        for request in requests:
            generator = None
            if request.temperature > 0:  # the seed governs this row only, whatever else is in the batch
                generator = torch.Generator(device=self.device).manual_seed(request.seed)
            generators.append(generator)
        return _Decoding(requests=list(requests), generators=generators, tokens=[[] for _ in requests],
                         done=[False] * len(requests),
                         rows=list(range(len(requests))), logits=out.logits[:, -1], cache=out.past_key_values,
                         mask=mask.to(self.device), next_position=positions[:, -1].to(self.device) + 1)

    @torch.inference_mode()
    def _decode(self, d: _Decoding, steps: int) -> None:
        """Up to ``steps`` decode steps: pick each live row's next token (argmax, or a sample
        from its own generator), retire rows that reached EOS, a stop sequence or their length,
        and run the survivors one position further on the KV cache."""
        with self._lock:
            for _ in range(steps):
                picked = []
                for i, row in enumerate(d.rows):
                    request, logits = d.requests[row], d.logits[i]
                    if request.temperature > 0:
                        probs = torch.softmax(logits.float() / request.temperature, dim=-1)
                        token = int(torch.multinomial(probs, 1, generator=d.generators[row]))
                    else:
                        token = int(logits.argmax())
                    picked.append(token)
                    if not d.done[row]:
                        d.tokens[row].append(token)
                        d.done[row] = self._row_done(request, d.tokens[row])
                live = [i for i, row in enumerate(d.rows) if not d.done[row]]
                if not live:
                    d.rows = []
                    return
                if len(live) < len(d.rows) and d.drop_rows(live):
                    picked = [picked[i] for i in live]
                    d.rows = [d.rows[i] for i in live]
                # Rows that could not be dropped decode on; their tokens are no longer kept.
                d.mask = torch.cat([d.mask, d.mask.new_ones((len(d.rows), 1))], 1)
                out = self.model(input_ids=torch.tensor([[t] for t in picked], device=self.device),
                                 attention_mask=d.mask, position_ids=d.next_position[:, None],
                                 past_key_values=d.cache, use_cache=True)
                d.cache, d.logits = out.past_key_values, out.logits[:, -1]
                d.next_position = d.next_position + 1

    def _row_done(self, request: GenerationRequest, tokens: list[int]) -> bool:
        return (len(tokens) >= request.max_tokens or tokens[-1] in self.eos_ids
                or stop_end(tokens, request.stop, after=len(tokens) - 1) is not None)

    def failure(self) -> str | None:
        return None  # in-process: an error fails its batch, never the engine

    def close(self) -> None:
        self.model = None


@dataclass
class _Decoding:
    """Generation in progress: per request its tokens so far, whether it is done, and its
    random generator (None: greedy); ``rows`` maps the model batch's rows (the live requests) to request indices, and
    ``logits``, ``cache``, ``mask``, ``next_position`` are that batch's state."""

    requests: list[GenerationRequest]
    generators: list[torch.Generator | None]
    tokens: list[list[int]]
    done: list[bool]
    rows: list[int]
    logits: torch.Tensor
    cache: object
    mask: torch.Tensor
    next_position: torch.Tensor

    @property
    def finished(self) -> bool:
        return not self.rows

    def drop_rows(self, keep: list[int]) -> bool:
        """Keep only the batch rows ``keep`` (so finished rows cost nothing more); False when
        this model's cache cannot drop rows, and nothing changed."""
        layers = getattr(self.cache, "layers", None)
        if not layers or not all(hasattr(layer, "batch_select_indices") for layer in layers):
            return False
        index = torch.tensor(keep, device=self.mask.device)
        for layer in layers:
            layer.batch_select_indices(index)
        self.logits, self.mask, self.next_position = self.logits[index], self.mask[index], self.next_position[index]
        return True

    def generations(self, eos_ids) -> list[Generation]:
        return [finish_generation(tokens, request, eos_ids)
                for tokens, request in zip(self.tokens, self.requests, strict=True)]
