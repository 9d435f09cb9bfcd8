from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from drlaif.server_process import INHERITED_DRLAIF, ServerProcess

# DRLAIF_* variables that configure the tests themselves, not the server or the clients.
TEST_KNOBS = frozenset({"DRLAIF_OPENRLHF_SRC", "DRLAIF_REQUIRE_BROWSER", "DRLAIF_SCREENSHOT_DIR"})
# `make test` runs the suite on two pytest-xdist workers (--dist loadgroup), one test file at a
# time on each, so that a file's module fixtures (its servers) start once. Files that start a local
# Ray cluster share one group, so that two clusters never start at once. So do the files that
# start vLLM engines: vLLM pins each engine's worker to the same core, so two engines on two
# workers would fight over it; and the group's `drlaif-server --backend vllm` (vllm_server)
# starts once for the files that read from it.
SHARED_WORKER = {"test_ray_serve.py": "ray", "test_verl_own_loop.py": "ray",
                 "test_generation.py": "vllm", "test_openai_backend_e2e.py": "vllm", "test_vllm_backend.py": "vllm",
                 "test_vllm_reads.py": "vllm"}
# The groups that take longest (minutes each on two cores), in that order; the rest follow in
# file order. `make test` passes --no-loadscope-reorder so that xdist hands them out in this
# order (by default it orders groups by their number of tests), and the last group to start is
# a short one: neither worker waits long for the other at the end.
LONGEST_FIRST = ["vllm", "test_compatibility_e2e.py", "test_trainer_e2e.py", "ray", "test_reasoning_e2e.py",
                 "test_admission_e2e.py", "test_faults.py", "test_overoptimisation_e2e.py", "test_groups.py",
                 "test_prefix_reuse.py"]


def pytest_configure(config):
    """Under xdist, one thread per process for torch and its BLAS (in the workers and every
    server, trainer and engine they start, which inherit it). Each worker's test already runs
    a client and a server or trainer side by side; with each process spinning up a thread per
    core, the two workers' processes oversubscribe the cores and the OpenMP threads spin
    against each other instead of computing."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ.setdefault(name, "1")


def xdist_group(item: pytest.Item) -> str:
    """A test's xdist group: its file, or the group its file shares (SHARED_WORKER)."""
    return SHARED_WORKER.get(item.path.name, item.path.name)


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config, items):
    """Put each test in its xdist group, longest groups first.

    xdist's worker appends "@group" to a marked test's node id, and its scheduler sends a
    group's tests to one worker by that suffix. It sets ``item._nodeid``, which pytest 9.2 no
    longer reads (pytest-dev/pytest-xdist#1386): without the suffix set here each test would be
    a group of its own, and a file's module fixtures (servers, vLLM engines) would start on
    both workers. A pytest where the suffix cannot be set stops the run rather than ungroup it
    silently."""
    items.sort(key=lambda item: LONGEST_FIRST.index(g) if (g := xdist_group(item)) in LONGEST_FIRST
               else len(LONGEST_FIRST))
    for item in items:
        item.add_marker(pytest.mark.xdist_group(xdist_group(item)))
    result = yield
    if config.getoption("loadgroup", False):  # an xdist worker, under --dist loadgroup
        for item in items:
            suffix = f"@{xdist_group(item)}"
            if not item.nodeid.endswith(suffix) and hasattr(item, "_id"):
                item._id = type(item._id).parse(item.nodeid + suffix)
            if not item.nodeid.endswith(suffix):
                raise pytest.UsageError(f"cannot put {item.nodeid} in its xdist group {suffix[1:]}: this pytest "
                                        "and pytest-xdist do not group tests (tests/conftest.py)")
    return result


@pytest.fixture(scope="session", autouse=True)
def _no_drlaif_settings_from_the_shell():
    """The shell's DRLAIF_* settings (DRLAIF_API_KEY, DRLAIF_MODEL, DRLAIF_BACKEND, ...) would
    reach in-process settings, the reward clients and the trainer's subprocesses: the tests
    run without them (a test that wants one sets it with monkeypatch). Session-scoped and
    autouse, so it is in place before any other fixture."""
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("DRLAIF_") and name not in INHERITED_DRLAIF | TEST_KNOBS:
                mp.delenv(name)
        yield


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    """The embedded labeler as a safetensors directory (converted once, then cached)."""
    from drlaif.embedded_model import default_cache_dir, embedded_model_dir

    return embedded_model_dir(default_cache_dir())


@pytest.fixture(scope="session")
def server(embedded_model_dir) -> ServerProcess:
    """One real drlaif-server on the embedded labeler, shared by the integration tests."""
    # The reward cache is off here so that every test's reads are computed (batching, parity);
    # tests/test_reward_cache.py runs its own server with the default cache.
    with ServerProcess("--max-wait-ms", "5", "--reward-cache-items", "0") as proc:
        yield proc


@pytest.fixture(scope="session")
def own_server() -> str:
    """The URL of the docs' stdlib reward server (docs/examples/own_reward_server.py): a /score
    that answers only rewards, run as a subprocess as a third party's server would be."""
    from support import own_reward_server

    with own_reward_server() as url:
        yield url


@pytest.fixture(scope="session")
def small_queue_server(embedded_model_dir) -> ServerProcess:
    """A real drlaif-server that admits 8 items in flight, 8 per request (backpressure tests)."""
    with ServerProcess("--max-queue-items", "8", "--max-items-per-request", "8", "--reward-cache-items", "0") as proc:
        yield proc


def _start_vllm_server(model_dir: Path) -> ServerProcess:
    """Started unready, so that tests/test_vllm_backend.py's readiness test sees what a client
    saw while the engine was loading: ``early_live``, ``early_ready`` and ``early_score``."""
    import httpx
    from support import needs_vllm

    needs_vllm()
    # 1 GiB of KV cache (23k tokens of this labeler) is plenty here and spares the suite's memory.
    # The reward cache is off: every read is computed. At most 8 items a request (HELD_OUT in
    # one), and 16 in flight (HELD_OUT twice over, as single-item requests).
    proc = ServerProcess("--backend", "vllm", "--model", str(model_dir), "--enforce-eager",
                         "--max-items-per-request", "8", "--max-queue-items", "16",
                         "--reward-cache-items", "0", env={"VLLM_CPU_KVCACHE_SPACE": "1"})
    proc.max_items, proc.max_queue = 8, 16
    proc.start(wait_ready=False)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                proc.early_live = httpx.get(f"{proc.url}/health/live", timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or not proc.alive():
                    raise RuntimeError(f"the server never answered:\n{proc.output()}") from None
                time.sleep(0.05)
        proc.early_ready = httpx.get(f"{proc.url}/health/ready", timeout=5)
        proc.early_score = httpx.post(f"{proc.url}/score", json={"items": [{"prompt": "What is 2+2?",
                                                                            "response": "4"}]}, timeout=5)
        proc.wait_ready()
    except BaseException:
        proc.stop()
        raise
    return proc


@pytest.fixture(scope="session")
def vllm_server(embedded_model_dir) -> ServerProcess:
    """One real `drlaif-server --backend vllm --enforce-eager` on the embedded labeler (float32),
    shared by tests/test_vllm_backend.py and tests/test_openai_backend_e2e.py (the in-process
    reference of the openai backend), which share a worker (SHARED_WORKER). Its stop is checked:
    uvicorn's own exit on SIGTERM, and no engine process left behind."""
    import psutil

    proc = _start_vllm_server(embedded_model_dir)
    yield proc
    try:
        engine_processes = psutil.Process(proc.proc.pid).children(recursive=True)
    finally:
        code = proc.stop()
    assert engine_processes, "the vLLM engine runs in processes of its own"
    assert code in (0, -signal.SIGTERM), proc.output()
    _, left = psutil.wait_procs(engine_processes, timeout=15)
    assert left == [], proc.output()


@pytest.fixture(scope="session")
def reference_model(embedded_model_dir):
    """The same model loaded independently, for teacher-forced reference computations."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32)
    model.eval()
    return model


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state that a second Accelerator with other settings
    (e.g. trl's trainers in an earlier test) refuses to change; start and leave it clean."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory) -> Path:
    """A randomly initialised two-layer Llama with the embedded policy's tokenizer, saved as a
    `--model` directory: a trainer runs on it in seconds. Its attention dropout is high, so a
    read of the policy in train mode differs from one in eval mode."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainer.ppo.models import load_tokenizer, resolve_policy

    tokenizer = load_tokenizer(resolve_policy(None))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, attention_dropout=0.5,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-policy")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
