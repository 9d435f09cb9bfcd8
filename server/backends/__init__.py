"""Labeler engines behind one small interface (see ``base.Backend``)."""

from __future__ import annotations

import os

from drlaif.embedded_model import resolve_model
from server.backends.base import Backend, BackendInfo


def create_backend(settings) -> Backend:
    """Build the backend the settings ask for (blocking: loads the model, or connects to its server)."""
    path, name = resolve_model(settings.model, settings.cache_dir)
    if settings.backend == "openai":
        from server.backends.openai_backend import OpenAIBackend

        # The model is served elsewhere; here only its tokenizer (and end-of-sequence ids) load.
        key = settings.openai_api_key
        return OpenAIBackend.start(settings.base_url, model_path=path, served_model=settings.served_model,
                                   api_key=key.get_secret_value() if key else None, logprobs=settings.openai_logprobs,
                                   max_concurrency=settings.openai_max_concurrency,
                                   timeout_s=settings.openai_timeout_s, trust_remote_code=settings.trust_remote_code)
    if settings.backend == "vllm":
        from server.backends.vllm_backend import EngineOptions, VLLMBackend

        # vLLM configures its logging (here and in its engine processes) from the environment.
        os.environ.setdefault("VLLM_LOGGING_LEVEL", settings.log_level.upper())
        options = EngineOptions(
            tensor_parallel_size=settings.tensor_parallel_size,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            max_model_len=settings.max_model_len,
            enforce_eager=settings.enforce_eager,
            max_num_seqs=settings.max_num_seqs,
            block_size=settings.block_size,
            max_num_batched_tokens=settings.max_batch_tokens,
            prefix_caching=settings.prefix_caching,
        )
        return VLLMBackend.start(path, model_name=name, device=settings.device, dtype=settings.dtype,
                                 trust_remote_code=settings.trust_remote_code, options=options)
    from server.backends.transformers_backend import TransformersBackend

    return TransformersBackend(path, model_name=name, device=settings.device, dtype=settings.dtype,
                               trust_remote_code=settings.trust_remote_code, prefix_reuse=settings.prefix_caching)


__all__ = ["Backend", "BackendInfo", "create_backend"]
