"""Labeler engines behind one small interface (see ``base.Backend``)."""

from __future__ import annotations

from server.backends.base import Backend, BackendInfo
from server.backends.embedded import EMBEDDED_NAME, embedded_model_dir


def resolve_model(model: str | None, cache_dir) -> tuple[str, str]:
    """(path or hub id to load, name to report). None or "embedded" is the embedded labeler."""
    if model in (None, "", "embedded"):
        return str(embedded_model_dir(cache_dir)), EMBEDDED_NAME
    return model, model


def create_backend(settings) -> Backend:
    """Build the backend the settings ask for (blocking: loads the model)."""
    path, name = resolve_model(settings.model, settings.cache_dir)
    from server.backends.transformers_backend import TransformersBackend

    return TransformersBackend(path, model_name=name, device=settings.device, dtype=settings.dtype,
                               trust_remote_code=settings.trust_remote_code)


__all__ = ["Backend", "BackendInfo", "create_backend", "resolve_model"]
