"""The reference backend: a Hugging Face causal LM run with torch.

One padded forward pass per batch. Sequences are left-padded so that every read sits
a fixed distance from the end; the model is asked for logits at only those distances
(``logits_to_keep``), so the vocabulary projection runs on a handful of positions
instead of every token.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence

import numpy as np
import torch

from server.backends.base import BackendInfo, resolve_dtype
from server.scoring import TokenReads

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class TransformersBackend:
    """Log-probability reads with ``transformers.AutoModelForCausalLM``."""

    def __init__(self, model_path: str, *, model_name: str, device: str = "auto", dtype: str = "auto",
                 trust_remote_code: bool = False):
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
        self.info = BackendInfo(
            name="transformers",
            model=model_name,
            dtype=str(torch_dtype).removeprefix("torch."),
            device=device,
            max_context=int(getattr(self.model.config, "max_position_embeddings", 0) or 0),
        )
        # The batcher already runs one batch at a time; the lock keeps direct callers honest.
        self._lock = threading.Lock()
        log.info("loaded %s in %.1fs", model_name, time.perf_counter() - started)

    async def read_logprobs(self, batch: Sequence[TokenReads]) -> list[list[np.ndarray]]:
        return await asyncio.to_thread(self.forward, batch)

    @torch.inference_mode()
    def forward(self, batch: Sequence[TokenReads]) -> list[list[np.ndarray]]:
        """Synchronous batched read; see :meth:`Backend.read_logprobs`."""
        if not batch:
            return []
        width = max(seq.num_tokens for seq in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        # A read at position p predicts token p from the hidden state at p - 1, i.e.
        # (len - p + 1) places from the end of the (left-padded) row.
        distances: set[int] = set()
        for row, seq in enumerate(batch):
            n = seq.num_tokens
            input_ids[row, width - n :] = torch.tensor(seq.input_ids, dtype=torch.long)
            mask[row, width - n :] = 1
            for position, _ in seq.reads:
                if not 0 < position <= n:
                    raise ValueError(f"read position {position} outside a sequence of {n} tokens")
                distances.add(n - position + 1)
        keep = sorted(distances, reverse=True)  # ascending column order
        column = {d: i for i, d in enumerate(keep)}
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        with self._lock:
            logits = self.model(
                input_ids=input_ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=position_ids.to(self.device),
                logits_to_keep=torch.tensor([width - d for d in keep], device=self.device),
                use_cache=False,
            ).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
        out = []
        for row, seq in enumerate(batch):
            n = seq.num_tokens
            out.append([
                logprobs[row, column[n - position + 1], list(candidates)].numpy().astype(np.float64)
                for position, candidates in seq.reads
            ])
        return out

    def close(self) -> None:
        self.model = None
