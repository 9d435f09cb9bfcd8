"""Settings: flags, env vars and validation (the configuration reference is generated from them: tests/test_docs.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from server.config import ServerSettings, parse_settings


def test_defaults_and_flags():
    s = parse_settings([])
    assert s.model is None and s.host == "127.0.0.1" and s.port == 8000 and s.truncate is True
    s = parse_settings(["--port", "9001", "--no-truncate", "--max-batch-items", "8", "--model", "some/model"])
    assert (s.port, s.truncate, s.max_batch_items, s.model) == (9001, False, 8, "some/model")


def test_env_vars_and_flag_precedence(monkeypatch):
    monkeypatch.setenv("DRLAIF_PORT", "7000")
    monkeypatch.setenv("DRLAIF_MAX_WAIT_MS", "2.5")
    s = parse_settings([])
    assert s.port == 7000 and s.max_wait_ms == 2.5
    assert parse_settings(["--port", "7001"]).port == 7001


def test_api_key_sources(tmp_path, monkeypatch):
    key_file = tmp_path / "key"
    key_file.write_text("  from-file \n")
    assert parse_settings(["--api-key-file", str(key_file)]).resolved_api_key() == "from-file"
    monkeypatch.setenv("DRLAIF_API_KEY", "from-env")
    assert parse_settings([]).resolved_api_key() == "from-env"
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        parse_settings(["--api-key-file", str(empty)]).resolved_api_key()


def test_invalid_settings_are_refused():
    with pytest.raises(ValidationError, match="max_items_per_request"):
        ServerSettings(max_items_per_request=100, max_queue_items=10)
    with pytest.raises(ValidationError):
        ServerSettings(port=70000)
    with pytest.raises(ValidationError):
        ServerSettings(backend="nope")


def test_vllm_backend_and_engine_options(monkeypatch):
    s = parse_settings([])
    assert (s.backend, s.tensor_parallel_size, s.gpu_memory_utilization, s.max_model_len, s.enforce_eager,
            s.max_num_seqs, s.prefix_caching) == ("transformers", 1, 0.9, None, False, None, True)
    s = parse_settings(["--backend", "vllm", "--tensor-parallel-size", "2", "--gpu-memory-utilization", "0.5",
                        "--max-model-len", "4096", "--enforce-eager", "--max-num-seqs", "64",
                        "--no-prefix-caching"])
    assert (s.backend, s.tensor_parallel_size, s.gpu_memory_utilization, s.max_model_len, s.enforce_eager,
            s.max_num_seqs, s.prefix_caching) == ("vllm", 2, 0.5, 4096, True, 64, False)
    monkeypatch.setenv("DRLAIF_BACKEND", "vllm")
    monkeypatch.setenv("DRLAIF_PREFIX_CACHING", "false")
    s = parse_settings([])
    assert s.backend == "vllm" and s.prefix_caching is False
    for bad in ({"gpu_memory_utilization": 0}, {"gpu_memory_utilization": 1.5}, {"tensor_parallel_size": 0},
                {"max_num_seqs": 0}):
        with pytest.raises(ValidationError):
            ServerSettings(**bad)


def test_allowed_hosts_flag_env_and_defaults(monkeypatch):
    localhost = frozenset({"localhost", "127.0.0.1", "::1"})
    # Unset: localhost names on a loopback address without a key (DNS rebinding), else any host.
    assert parse_settings([]).allowed_host_names() == localhost
    assert parse_settings(["--host", "::1"]).allowed_host_names() == localhost
    assert parse_settings(["--host", "localhost"]).allowed_host_names() == localhost
    assert parse_settings(["--host", "0.0.0.0"]).allowed_host_names() is None
    assert parse_settings(["--api-key", "k"]).allowed_host_names() is None
    assert ServerSettings(api_key_file="/nonexistent").allowed_host_names() is None  # the file is not read
    # Given: as given (lower case, IPv6 brackets dropped), in place of the localhost names; * for any.
    for argv in (["--allowed-hosts", "Judge.Internal,[::1]"],
                 ["--allowed-hosts", "judge.internal", "--allowed-hosts", "::1"]):
        assert parse_settings(argv).allowed_host_names() == {"judge.internal", "::1"}, argv
    assert parse_settings(["--allowed-hosts", "*"]).allowed_host_names() is None
    assert parse_settings(["--allowed-hosts", "judge.internal", "--api-key", "k"]).allowed_host_names() == {
        "judge.internal"}
    monkeypatch.setenv("DRLAIF_ALLOWED_HOSTS", "judge.internal, 10.0.0.7")
    assert parse_settings([]).allowed_host_names() == {"judge.internal", "10.0.0.7"}
    assert parse_settings(["--allowed-hosts", "other"]).allowed_hosts == ["other"]  # the flag wins
    for bad, message in (('["a","b"]', "not a host name"), ("*,a", "give it alone"), (",", "at least one"),
                         ("a b", "not a host name")):
        with pytest.raises(ValidationError, match=message):
            ServerSettings(allowed_hosts=bad)
