"""Deployment files (Dockerfile, compose, Envoy, Prometheus, Kubernetes) agree with the code.

No container engine or cluster runs here, so these tests parse the files and check them against
the real ``ferry serve`` / ``ferry health`` argument parsers and defaults: flags exist, ports
match, grace periods outlast the drain, and every FERRY_* setting is one the server reads.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import yaml

import ferry
from ferry.commands import health as health_command
from ferry.commands import serve as serve_command

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
SCALE_SERVICE = "ferry-replica"

# ------------------------------------------------------------------ the real command line


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("FERRY_"):
            monkeypatch.delenv(name)


def _parser(module: Any) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"ferry {module.__name__.rsplit('.', 1)[-1]}", exit_on_error=False)
    module.add_arguments(p)
    return p


def _options(module: Any) -> set[str]:
    return {s for action in _parser(module)._actions for s in action.option_strings}


@dataclass(frozen=True)
class ServeDefaults:
    port: int
    metrics_port: int
    drain_timeout: float


@pytest.fixture
def defaults(monkeypatch: pytest.MonkeyPatch) -> ServeDefaults:
    """``ferry serve``'s defaults with no FERRY_* variable set."""
    _clean_env(monkeypatch)
    ns = _parser(serve_command).parse_args([])
    return ServeDefaults(int(ns.port), int(ns.metrics_port), float(ns.drain_timeout))


def _probe_value(value: str) -> str:
    """A value unlike ``value`` but of the same kind (a number stays a number)."""
    try:
        return str(int(float(value)) + 1)
    except ValueError:
        return f"{value}-probe"


def server_reads(name: str, value: str, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Whether setting the environment variable changes what ``ferry serve`` would run with:
    some parsed default (``ferry serve`` reads FERRY_* into its flag defaults), or the models it
    loads (FERRY_MODEL, FERRY_DEFAULT_MODEL)."""
    _clean_env(monkeypatch)
    if name == "FERRY_DEFAULT_MODEL":
        monkeypatch.setenv(name, value)
        return ferry.default_model_dir() == Path(value)
    if name == "FERRY_MODEL":  # resolved when the server starts, not as a flag default
        monkeypatch.setenv(name, value)
        return serve_command.model_dirs(argparse.Namespace(model=None)) == [Path(value)]
    baseline = vars(_parser(serve_command).parse_args([]))
    for candidate in (value, _probe_value(value)):
        monkeypatch.setenv(name, candidate)
        try:
            changed = vars(_parser(serve_command).parse_args([])) != baseline
        except (argparse.ArgumentError, ValueError, SystemExit):
            changed = True  # the server read it and rejected the probe value
        if changed:
            return True
    return False


# Settings the deployment files set ahead of the flag that reads them (work in progress): accepted
# while `ferry serve` lacks the flag, checked like the others once it has it.
ANNOUNCED = {"FERRY_HTTP_PORT": "--http-port"}


def assert_server_reads(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    pending = {n for n, flag in ANNOUNCED.items() if flag not in _options(serve_command)}
    names = [n for n in env if n.startswith("FERRY_") and n not in pending]
    assert names, f"{where} sets no FERRY_* variable"
    ignored = [n for n in names if not server_reads(n, str(env[n]), monkeypatch)]
    assert not ignored, f"{where} sets {ignored}, which `ferry serve` does not read"


def assert_serve_flags(args: list[str], where: str) -> None:
    known = _options(serve_command)
    flags = [a.split("=", 1)[0] for a in args if a.startswith("-")]
    unknown = [f for f in flags if f not in known]
    assert not unknown, f"{where} passes {unknown} to `ferry serve`, which has no such flag"


def test_serve_and_health_help_show_the_flags_the_files_use(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ferry.cli import main

    _clean_env(monkeypatch)

    def help_text(command: str) -> str:
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        return capsys.readouterr().out

    serve_help = help_text("serve")
    for flag in ("--model", "--host", "--port", "--metrics-port", "--device", "--drain-timeout", "--log-level"):
        assert flag in serve_help, f"`ferry serve --help` does not list {flag}"
    assert "--server" in help_text("health")


def test_health_command_does_not_load_torch() -> None:
    """Container health checks run `ferry health` every few seconds under a timeout: it must stay a
    light gRPC client (no torch import, which takes seconds on a busy CPU)."""
    code = "import sys; from ferry.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_health_command_exit_codes_against_an_in_process_server(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The documented codes of the command every health check here runs: 0 serving, 4 not
    serving (draining), 2 unreachable."""
    from ferry.server.app import SERVICE_NAME, ServerConfig, ServerThread
    from ferry.server.registry import ModelRegistry

    from ferry.cli import main

    _clean_env(monkeypatch)
    registry = ModelRegistry.load([tiny_checkpoint], device="cpu")
    thread = ServerThread(registry, ServerConfig(host="127.0.0.1", port=0, drain_timeout=0))
    thread.start()
    address = f"127.0.0.1:{thread.port}"
    try:
        assert main(["health", "--server", address]) == 0
        assert main(["health", "--server", address, "--service", SERVICE_NAME]) == 0
        assert thread.server is not None
        thread.run(thread.server.stop_admitting())  # what SIGTERM does first
        assert main(["health", "--server", address]) == 4
        assert main(["health", "--server", address, "--service", SERVICE_NAME]) == 4
    finally:
        thread.stop(drain_timeout=0)
    assert main(["health", "--server", address, "--connect-timeout", "1"]) == 2


# ------------------------------------------------------------------ Dockerfile


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int

    def json_args(self) -> list[str] | None:
        """The exec (JSON) form's list, or None for the shell form."""
        text = self.args.strip()
        return json.loads(text) if text.startswith("[") else None


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: dict[str, list[Instruction]] = field(default_factory=dict)
    bases: dict[str, str] = field(default_factory=dict)
    final: str = ""

    @property
    def runtime(self) -> list[Instruction]:
        return self.stages[self.final]

    def resolve(self, text: str) -> str:
        """``${NAME}`` of the global ARGs replaced by their defaults."""
        return re.sub(r"\$\{(\w+)\}", lambda m: self.global_args.get(m.group(1), m.group(0)), text)

    def env(self, stage: str) -> dict[str, str]:
        """ENV of a stage, including what it inherits from the stage it is built FROM (with the
        default build arguments)."""
        base = self.resolve(self.bases[stage])
        env = self.env(base) if base in self.stages else {}
        for ins in self.stages[stage]:
            if ins.keyword == "ENV":
                env |= dict(tok.split("=", 1) for tok in shlex.split(ins.args))
        return env


def parse_dockerfile(text: str) -> Dockerfile:
    """Instructions of a Dockerfile: comments dropped, backslash continuations joined."""
    instructions: list[Instruction] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1]
            continue
        keyword, _, rest = (pending + raw).strip().partition(" ")
        instructions.append(Instruction(keyword.upper(), rest.strip(), start))
        pending = ""
    assert not pending, "Dockerfile ends inside a continued line"

    df = Dockerfile(global_args={})
    stage = ""
    for ins in instructions:
        if ins.keyword == "FROM":
            words = ins.args.split()
            image = words[0]
            stage = words[2] if len(words) >= 3 and words[1].upper() == "AS" else f"stage{len(df.stages)}"
            df.stages[stage], df.bases[stage], df.final = [], image, stage
        elif not stage:
            assert ins.keyword == "ARG", f"line {ins.line}: only ARG may come before the first FROM"
            name, _, default = ins.args.partition("=")
            df.global_args[name] = default
        else:
            df.stages[stage].append(ins)
    return df


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


def _all(df: Dockerfile, keyword: str, stage: str | None = None) -> list[Instruction]:
    return [i for i in df.stages[stage or df.final] if i.keyword == keyword]


def _context_copies(df: Dockerfile) -> list[Instruction]:
    """COPY instructions of every stage that read the build context (not ``--from`` a stage)."""
    return [i for ins in df.stages.values() for i in ins if i.keyword == "COPY" and not i.args.startswith("--from")]


def _makefile_torch_pin() -> str:
    text = (ROOT / "Makefile").read_text()
    match = re.search(r"^TORCH_PIN\s*:?=\s*torch==(\S+)", text, re.M)
    assert match, "Makefile has no TORCH_PIN := torch==X pin"
    # Like the Dockerfile: the CPU wheel index unless TORCH_INDEX_URL says otherwise.
    assert re.search(r"^TORCH_INDEX_URL \?= https://download\.pytorch\.org/whl/cpu$", text, re.M)
    return match.group(1)


def test_dockerfile_has_cuda_and_cpu_variants_on_the_pinned_torch(dockerfile: Dockerfile) -> None:
    assert dockerfile.global_args.get("VARIANT") == "cuda", "the default build should be the GPU image"
    assert dockerfile.bases[dockerfile.final] == "base-${VARIANT}"
    torch_version = dockerfile.global_args["TORCH_VERSION"]
    assert torch_version == _makefile_torch_pin(), "the image's torch differs from the one the Makefile tests with"

    # Fully qualified names: podman's short-name mode refuses `python:3.11-slim`.
    cuda_base = dockerfile.resolve(dockerfile.bases["base-cuda"])
    assert re.fullmatch(
        rf"docker\.io/pytorch/pytorch:{re.escape(torch_version)}-cuda[\d.]+-cudnn\d+-runtime", cuda_base
    )
    assert dockerfile.resolve(dockerfile.bases["base-cpu"]) == "docker.io/library/python:3.11-slim"

    # The CPU torch comes from TORCH_INDEX_URL (default: the CPU wheel index; empty: pip's own
    # index), and the build checks that it really is a build without CUDA.
    assert dockerfile.global_args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    install = " ".join(i.args for i in _all(dockerfile, "RUN", "build"))
    assert '"torch==${TORCH_VERSION}"' in install
    assert '${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}' in install
    assert "torch.version.cuda" in install and "cuda is None" in install
    assert dockerfile.env("base-cpu")["FERRY_DEVICE"] == "cpu"


def test_dockerfile_builds_offline_and_keeps_build_settings_out_of_the_image(dockerfile: Dockerfile) -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.M), "a syntax line makes BuildKit pull a frontend image"
    assert dockerfile.bases["build"] == dockerfile.bases[dockerfile.final] == "base-${VARIANT}", "multi-stage"
    runtime = dockerfile.runtime
    # Mirror settings are build arguments of the build stage only; the CA comes as a secret.
    build_args = {i.args.split("=", 1)[0] for i in _all(dockerfile, "ARG", "build")}
    assert {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "TORCH_INDEX_URL"} <= build_args
    assert not any(i.keyword == "ARG" and i.args.startswith("PIP_") for i in runtime)
    assert not [k for k in dockerfile.env(dockerfile.final) if k.startswith("PIP_")]
    pip_runs = [i for i in _all(dockerfile, "RUN", "build") if "pip install" in i.args and "--no-deps" not in i.args]
    assert pip_runs and all("--mount=type=secret,id=pip_ca" in i.args for i in pip_runs)
    assert all("-c /opt/ferry/constraints.txt" in i.args for i in pip_runs), "pinned versions"
    # The runtime stage takes the built venv and the model only: no source tree, no pip run.
    copies = [i.args for i in runtime if i.keyword == "COPY"]
    assert copies == ["--from=build /opt/ferry/venv /opt/ferry/venv", "models/ /opt/ferry/models/"]
    assert not any("pip" in i.args for i in runtime if i.keyword == "RUN")
    labels = " ".join(i.args for i in runtime if i.keyword == "LABEL")
    for key in ("title", "description", "licenses", "version", "revision", "source"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_image_constraints_pin_every_runtime_requirement() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for line in (ROOT / "deploy" / "image-constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"{line!r} is not an exact pin"
            pins[re.sub(r"[-_.]+", "-", name.lower())] = version
    for requirement in project["dependencies"] + project["optional-dependencies"]["server"]:
        name = re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower())
        assert name == "torch" or name in pins, f"deploy/image-constraints.txt does not pin {name}"
    assert "torch" not in pins, "torch is pinned by the Dockerfile's TORCH_VERSION (the CUDA base brings its own)"
    assert "sacrebleu" not in pins, "only `ferry evaluate` needs it, not the server"


def test_dockerfile_installs_dependencies_before_the_source(dockerfile: Dockerfile) -> None:
    steps = dockerfile.stages["build"]
    copies = [i for i in steps if i.keyword == "COPY"]
    sources = [i.args.split()[0] for i in copies]
    assert sources[:2] == ["deploy/image-constraints.txt", "pyproject.toml"], "dependencies install first"
    deps = next(i for i in steps if i.keyword == "RUN" and "tomllib" in i.args)
    first_source = next(i for i in copies if i.args.split()[0].rstrip("/") in {"ferry", "model", "server"})
    assert deps.line < first_source.line

    # Run the image's own requirement extraction against our pyproject.toml: base + server extra.
    extract = deps.args[deps.args.index("python -c") :].split(" > ", 1)[0]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(["sh", "-c", extract], cwd=ROOT, capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert out.stdout.split() == project["dependencies"] + project["optional-dependencies"]["server"]

    install = [i for i in steps if i.keyword == "RUN" and '".[server]"' in i.args]
    assert install and install[0].line > first_source.line, "the package is installed with the server extra"


def test_dockerfile_copies_every_package_and_bakes_the_model_in(dockerfile: Dockerfile) -> None:
    import tomllib

    package_dirs = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    )
    copied = {i.args.split()[0].rstrip("/"): i.args.split()[-1] for i in _context_copies(dockerfile)}
    assert package_dirs <= set(copied), f"the image misses packages {package_dirs - set(copied)}"
    # The model store: copied to a directory that FERRY_DEFAULT_MODEL points into.
    model_dir = dockerfile.env(dockerfile.final)["FERRY_DEFAULT_MODEL"]
    assert model_dir.startswith(copied["models"].rstrip("/") + "/")
    for source in copied:
        # models/ (trained separately) and README.md (written with the docs) need only exist at build time.
        if source not in {"models", "README.md"}:
            assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which does not exist"


def test_every_package_is_installed_by_a_non_editable_install() -> None:
    """The image installs the package for real (not editable): every directory with an
    ``__init__.py`` under the package roots must be listed in ``[tool.setuptools] packages``."""
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set()
    for package, directory in setuptools["package-dir"].items():
        for init in (ROOT / directory).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / directory)
            found.add(".".join([package, *relative.parts]))
    missing = found - set(setuptools["packages"])
    assert not missing, f"pyproject.toml's packages list misses {sorted(missing)}: the image would lack them"


def test_dockerfile_entrypoint_ports_and_signal_match_ferry_serve(
    dockerfile: Dockerfile, defaults: ServeDefaults, monkeypatch: pytest.MonkeyPatch
) -> None:
    (entrypoint,) = _all(dockerfile, "ENTRYPOINT")
    assert entrypoint.json_args() == ["ferry", "serve"]
    for cmd in _all(dockerfile, "CMD"):
        assert_serve_flags(cmd.json_args() or [], "the Dockerfile's CMD")
    exposed = {int(p) for i in _all(dockerfile, "EXPOSE") for p in i.args.split()}
    env = dockerfile.env(dockerfile.final)
    assert exposed == {int(v) for k, v in env.items() if re.fullmatch(r"FERRY_\w*PORT", k)}, "EXPOSE every port"
    assert int(env["FERRY_PORT"]) == defaults.port
    assert int(env["FERRY_METRICS_PORT"]) == defaults.metrics_port
    assert int(env["FERRY_HTTP_PORT"]) == 8080
    assert env["FERRY_HOST"] == "0.0.0.0", "inside a container the server must listen on every interface"
    assert env["FERRY_METRICS_HOST"] == "0.0.0.0"
    assert_server_reads(env, monkeypatch, "the Dockerfile's ENV")
    assert [i.args for i in _all(dockerfile, "STOPSIGNAL")] == ["SIGTERM"]
    # `docker stop` / `podman stop` wait 10 s by default before SIGKILL: the image's drain fits.
    assert float(env["FERRY_DRAIN_TIMEOUT"]) < 10


def test_dockerfile_runs_as_a_non_root_user(dockerfile: Dockerfile) -> None:
    users = _all(dockerfile, "USER")
    assert users and users[-1].args not in {"root", "0"}
    useradd = next(i.args for i in _all(dockerfile, "RUN") if "useradd" in i.args)
    assert users[-1].args == "10001" and "--uid 10001" in useradd, "numeric, so runAsNonRoot can verify it"


def dockerfile_uid(df: Dockerfile) -> int:
    useradd = next(i.args for i in _all(df, "RUN") if "useradd" in i.args)
    match = re.search(r"--uid (\d+)", useradd)
    assert match
    return int(match.group(1))


def test_dockerfile_healthcheck_probes_the_served_port(dockerfile: Dockerfile, defaults: ServeDefaults) -> None:
    (check,) = _all(dockerfile, "HEALTHCHECK")
    options, _, command = check.args.partition("CMD ")
    assert "--start-period=" in options, "model loading needs a start period before failures count"
    argv = json.loads(command)
    assert argv[:2] == ["sh", "-c"]
    script = shlex.split(argv[2])
    assert script[:4] == ["exec", "ferry", "health", "--server"]
    assert "--server" in _options(health_command)
    host, _, port = script[4].partition(":")
    assert host == "127.0.0.1"
    assert port == f"${{FERRY_PORT:-{defaults.port}}}"
    # Expand it as the container's shell would, with the image's environment.
    env = {**dockerfile.env(dockerfile.final), "PATH": os.environ["PATH"]}
    out = subprocess.run(["sh", "-c", f"echo {script[4]}"], capture_output=True, text=True, env=env, timeout=10)
    assert out.stdout.strip() == f"127.0.0.1:{defaults.port}"


def _dockerignore_includes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matches a path or any parent."""
    included = True
    parts = path.split("/")
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        matched = any(
            fnmatch(p, pat) or (pat.startswith("**/") and (fnmatch(p, pat[3:]) or fnmatch(p.split("/")[-1], pat[3:])))
            for p in prefixes
        )
        if matched:
            included = negate
    return included


def test_dockerignore_keeps_the_context_lean(dockerfile: Dockerfile) -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    for copy in _context_copies(dockerfile):
        source = copy.args.split()[0].rstrip("/")
        assert _dockerignore_includes(patterns, f"{source}/x.py" if "." not in source else source), source
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "data/train.tsv",
        "runs/a/step.pt",
        "tests/test_x.py",
        "model/__pycache__/x.pyc",
        "models/en-de/checkpoint.pt",
        "bench/results/r.json",
    ):
        assert not _dockerignore_includes(patterns, path), f"{path} would be sent to the build"


# ------------------------------------------------------------------ docker compose


@dataclass(frozen=True)
class Reset:
    """A `!reset` merge tag: the key is removed from the merged model."""

    value: Any


@dataclass(frozen=True)
class Override:
    """An `!override` merge tag: the value replaces the base file's instead of merging into it."""

    value: Any


class ComposeLoader(yaml.SafeLoader):
    pass


ComposeLoader.add_constructor("!reset", lambda loader, node: Reset(None))
ComposeLoader.add_constructor(
    "!override",
    lambda loader, node: Override(
        loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.MappingNode)
        else loader.construct_object(node)
    ),
)


def load_compose(name: str) -> dict[str, Any]:
    text = (ROOT / name).read_text()
    return yaml.load(text, Loader=ComposeLoader)  # a SafeLoader plus the two merge tags


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with nothing set: the defaults."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def duration_s(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", value):
        total += float(number) * units[unit]
    assert total > 0, f"cannot read duration {value!r}"
    return total


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose("docker-compose.yml")["services"]


def _gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def _drain_s(env: dict[str, Any], defaults: ServeDefaults) -> float:
    return float(env.get("FERRY_DRAIN_TIMEOUT", defaults.drain_timeout))


@pytest.mark.parametrize("name", ["ferry", SCALE_SERVICE])
def test_compose_server_services_match_ferry_serve(
    compose: dict[str, Any], name: str, defaults: ServeDefaults, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = compose[name]
    assert interpolate(service["image"]) == "ferry:cpu", "plain docker-compose.yml is the CPU configuration"
    assert not _gpu_devices(service), "GPUs are opt-in (docker-compose.gpu.yml)"

    env = service.get("environment", {})
    assert_server_reads({k: interpolate(str(v)) for k, v in env.items()}, monkeypatch, f"compose service {name}")
    assert env["FERRY_HOST"] == env["FERRY_METRICS_HOST"] == "0.0.0.0"
    assert_serve_flags([str(a) for a in service.get("command", [])], f"compose service {name}")

    # The health check: `ferry health` against the port the server listens on in the container,
    # read from FERRY_PORT inside it ($$: compose leaves the variable to the container's shell).
    script = service["healthcheck"]["test"]
    assert isinstance(script, str), "a string test is CMD-SHELL in every compose tool"
    argv = shlex.split(script)
    assert argv[:4] == ["exec", "ferry", "health", "--server"]
    assert argv[4] == f"127.0.0.1:$${{FERRY_PORT:-{defaults.port}}}"
    assert {a for a in argv[2:] if a.startswith("-")} <= _options(health_command)
    assert duration_s(service["healthcheck"]["start_period"]) >= 30
    assert service["read_only"] is True and service["tmpfs"] == ["/tmp"]

    # Stopping: SIGTERM drains; the grace before SIGKILL must outlast the drain.
    assert service["stop_signal"] == "SIGTERM"
    assert duration_s(service["stop_grace_period"]) > _drain_s(env, defaults)

    assert any(str(v).endswith(":/models:ro") for v in service["volumes"]), "a read-only models volume"


def test_compose_single_server_publishes_grpc_and_metrics_ports(
    compose: dict[str, Any], defaults: ServeDefaults
) -> None:
    service = compose["ferry"]
    assert "profiles" not in service, "`docker compose up` alone must start the single server"
    assert service["build"]["context"] == "." and (ROOT / "Dockerfile").is_file()
    assert service["build"]["args"]["VARIANT"] == "cpu"
    assert "TORCH_INDEX_URL" in service["build"]["args"]
    assert "build" not in compose[SCALE_SERVICE], "one service builds the image, the replicas run it"
    container_ports = {int(interpolate(p).rsplit(":", 1)[1]) for p in service["ports"]}
    assert container_ports == {defaults.port, defaults.metrics_port, 8080}
    for name, other in compose.items():
        for port in other.get("ports", []):
            assert interpolate(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond the loopback"
        image = interpolate(other["image"])
        if name not in {"ferry", SCALE_SERVICE}:
            assert image.startswith("docker.io/") and not image.endswith("latest"), f"{name}: pin {image}"


def test_compose_scale_profile_puts_replicas_behind_envoy(compose: dict[str, Any], defaults: ServeDefaults) -> None:
    replicas = compose[SCALE_SERVICE]
    assert replicas["profiles"] == ["scale"]
    assert int(interpolate(str(replicas["deploy"]["replicas"]))) >= 2
    assert "ports" not in replicas, "replicas are reached through Envoy only (fixed host ports would collide)"
    assert {int(p) for p in replicas["expose"]} == {defaults.port, defaults.metrics_port, 8080}

    envoy = compose["envoy"]
    assert envoy["profiles"] == ["scale"]
    assert envoy["depends_on"][SCALE_SERVICE]["condition"] == "service_healthy"
    (mount,) = envoy["volumes"]
    host_path, container_path = mount.split(":")[:2]
    assert (ROOT / host_path).resolve() == ROOT / "deploy" / "envoy" / "envoy.yaml"
    assert container_path == envoy["command"][envoy["command"].index("-c") + 1]
    published = {int(interpolate(p).rsplit(":", 1)[1]) for p in envoy["ports"]}
    assert published == {_envoy_listener_port()}

    prometheus = compose["prometheus"]
    assert prometheus["profiles"] == ["scale"]
    host_path = prometheus["volumes"][0].split(":")[0]
    assert (ROOT / host_path).resolve() == ROOT / "deploy" / "prometheus" / "prometheus.yml"


def test_compose_gpu_override_only_adds_gpus() -> None:
    """The opt-in GPU file uses no merge tags (`!reset`, `!override`), which older Docker Compose
    and podman-compose cannot read: plain YAML that only adds keys."""
    text = (ROOT / "docker-compose.gpu.yml").read_text()
    assert not re.search(r"!(reset|override)\b", text)
    assert not re.search(r"!(reset|override)\b", (ROOT / "docker-compose.yml").read_text())
    assert not (ROOT / "docker-compose.cpu.yml").exists(), "the CPU configuration is docker-compose.yml itself"
    services = yaml.safe_load(text)["services"]
    base = load_compose("docker-compose.yml")["services"]
    assert set(services) == {"ferry", SCALE_SERVICE}
    assert services["ferry"]["build"]["args"]["VARIANT"] == "cuda"
    for name, service in services.items():
        assert interpolate(service["image"]) == "ferry:cuda" != interpolate(base[name]["image"])
        (gpu,) = _gpu_devices(service)
        assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
        assert "replicas" not in service["deploy"], "merged: the base file's replica count stays"


# ------------------------------------------------------------------ Envoy and Prometheus


def _envoy() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "deploy" / "envoy" / "envoy.yaml").read_text())


def _envoy_listener_port() -> int:
    (listener,) = _envoy()["static_resources"]["listeners"]
    return int(listener["address"]["socket_address"]["port_value"])


def test_envoy_balances_grpc_over_http2_to_every_replica(defaults: ServeDefaults) -> None:
    resources = _envoy()["static_resources"]
    (cluster,) = resources["clusters"]
    assert cluster["type"] == "STRICT_DNS", "one endpoint per address the replica service name resolves to"
    assert cluster["lb_policy"] in {"ROUND_ROBIN", "LEAST_REQUEST"}
    options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in options["explicit_http_config"], "gRPC upstreams need HTTP/2"
    (endpoint,) = [e["endpoint"] for group in cluster["load_assignment"]["endpoints"] for e in group["lb_endpoints"]]
    address = endpoint["address"]["socket_address"]
    assert address["address"] == SCALE_SERVICE
    assert int(address["port_value"]) == defaults.port
    (check,) = cluster["health_checks"]
    assert "grpc_health_check" in check

    (listener,) = resources["listeners"]
    (hcm,) = listener["filter_chains"][0]["filters"]
    routes = hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    assert all(r["route"]["cluster"] == cluster["name"] for r in routes)
    assert all(r["route"]["timeout"] == "0s" for r in routes), "long streams must not hit a route timeout"


def test_prometheus_scrapes_every_replica_metrics_port(defaults: ServeDefaults) -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    (sd,) = jobs["ferry"]["dns_sd_configs"]
    assert sd["names"] == [SCALE_SERVICE] and sd["type"] == "A"
    assert int(sd["port"]) == defaults.metrics_port
    (envoy_target,) = jobs["envoy"]["static_configs"][0]["targets"]
    assert int(envoy_target.rsplit(":", 1)[1]) == int(_envoy()["admin"]["address"]["socket_address"]["port_value"])


# ------------------------------------------------------------------ Kubernetes


def _k8s_documents() -> Iterator[dict[str, Any]]:
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            yield from (d for d in yaml.safe_load_all(path.read_text()) if d)


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for doc in _k8s_documents():
        assert doc["kind"] not in docs, f"two {doc['kind']} manifests"
        docs[doc["kind"]] = doc
    return docs


def _container(k8s: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (container,) = k8s["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def _prestop_sleep_s(container: dict[str, Any]) -> float:
    pre_stop = container.get("lifecycle", {}).get("preStop")
    if not pre_stop:
        return 0.0
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = pre_stop["exec"]["command"]
    assert command[0] == "sleep", f"unexpected preStop {command}"
    return float(command[1])


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_builds_the_manifests() -> None:
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    kinds = {d["kind"] for d in yaml.safe_load_all(out.stdout) if d}
    assert {"ConfigMap", "Deployment", "Service"} <= kinds


def test_k8s_configmap_holds_settings_the_server_reads(
    k8s: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch, defaults: ServeDefaults
) -> None:
    config = k8s["ConfigMap"]
    assert all(isinstance(v, str) for v in config["data"].values()), "ConfigMap values must be strings"
    assert_server_reads(config["data"], monkeypatch, "the ConfigMap")
    refs = [e["configMapRef"]["name"] for e in _container(k8s).get("envFrom", [])]
    assert config["metadata"]["name"] in refs, "the Deployment does not load the ConfigMap"


def test_k8s_deployment_ports_probes_and_gpu(
    k8s: dict[str, dict[str, Any]], defaults: ServeDefaults, dockerfile: Dockerfile
) -> None:
    container = _container(k8s)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    # Addresses and ports live in the container's env, next to the containerPorts (not in the
    # ConfigMap, where editing them would leave ports and probes behind).
    env = {e["name"]: e["value"] for e in container["env"]}
    assert not {"FERRY_HOST", "FERRY_PORT", "FERRY_METRICS_PORT", "FERRY_HTTP_PORT"} & set(k8s["ConfigMap"]["data"])
    assert env["FERRY_HOST"] == env["FERRY_METRICS_HOST"] == "0.0.0.0"
    assert ports["grpc"] == int(env["FERRY_PORT"])
    assert ports["metrics"] == int(env["FERRY_METRICS_PORT"])
    assert ports["http"] == int(env["FERRY_HTTP_PORT"])
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        # `ferry health` against whatever port FERRY_PORT names (native gRPC probes take a number only).
        command = container[kind]["exec"]["command"]
        assert command[:2] == ["sh", "-c"], kind
        script = shlex.split(command[2])
        assert script[:4] == ["exec", "ferry", "health", "--server"], kind
        assert script[4] == "127.0.0.1:${FERRY_PORT}", f"{kind} must follow FERRY_PORT"
        out = subprocess.run(
            ["sh", "-c", f"echo {script[4]}"],
            capture_output=True,
            text=True,
            env={"PATH": os.environ["PATH"], **env},
            timeout=10,
        )
        assert out.stdout.strip() == f"127.0.0.1:{ports['grpc']}"
    assert container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"] >= 60
    assert_serve_flags([str(a) for a in container.get("args", [])], "the Deployment's args")

    resources = container["resources"]
    assert int(resources["limits"]["nvidia.com/gpu"]) >= 1
    assert (
        resources["requests"].get("nvidia.com/gpu", resources["limits"]["nvidia.com/gpu"])
        == resources["limits"]["nvidia.com/gpu"]
    ), "extended resources need requests == limits"

    pod = k8s["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == dockerfile_uid(dockerfile)
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert any(v["name"] == tmp["name"] and "emptyDir" in v for v in pod["volumes"])
    pod_labels = k8s["Deployment"]["spec"]["template"]["metadata"]["labels"]
    spread = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    assert "kubernetes.io/hostname" in spread
    for constraint in spread.values():
        assert constraint["labelSelector"]["matchLabels"].items() <= pod_labels.items()


def test_k8s_termination_grace_outlasts_prestop_and_drain(
    k8s: dict[str, dict[str, Any]], defaults: ServeDefaults
) -> None:
    container = _container(k8s)
    grace = k8s["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    drain = _drain_s(k8s["ConfigMap"]["data"], defaults)
    assert grace > _prestop_sleep_s(container) + drain


def test_k8s_headless_service_selects_the_pods(k8s: dict[str, dict[str, Any]]) -> None:
    service, deployment = k8s["Service"], k8s["Deployment"]
    assert service["spec"]["clusterIP"] == "None", "client-side round_robin needs a headless Service"
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    if "PodDisruptionBudget" in k8s:
        assert k8s["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    container_ports = {p["name"]: p["containerPort"] for p in _container(k8s)["ports"]}
    for port in service["spec"]["ports"]:
        target = port["targetPort"]
        assert target in container_ports or target in container_ports.values()
        assert port["port"] == container_ports.get(target, target)


# ------------------------------------------------------------------ docs


def test_deployment_docs_cover_every_way_to_run() -> None:
    text = (ROOT / "docs" / "deploy.md").read_text()
    for needle in (
        "docker build",
        "--format docker",
        "TORCH_INDEX_URL",
        "--secret id=pip_ca",
        "deploy/smoke.sh",
        "docker-compose.gpu.yml",
        "--profile scale",
        "kubectl apply -k deploy/kubernetes",
        'load_balancing="round_robin"',
    ):
        assert needle in text, f"docs/deploy.md does not mention {needle}"
    assert "docs/deploy.md" in (ROOT / "docs" / "deployment.md").read_text(), "the old page points to the new one"
