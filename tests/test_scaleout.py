"""Scale-out without a proxy: three local ``ferry serve`` processes and one ``TranslationClient``
with gRPC's ``round_robin`` policy. Every replica serves the tiny model under its own version
string, so each response tells which replica produced it.

Also ``ferry health`` against a real server: exit 0 while it serves, 2 once it is gone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from ferry.client import FerryError, ProbeResult, TranslationClient, probe

REPLICAS = 3
START_TIMEOUT_S = 240.0  # three processes loading torch at once on a busy 2-core machine
CALL_TIMEOUT_S = 60.0

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Replica:
    version: str
    address: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def _replica_model(checkpoint: Path, dest: Path, version: str) -> Path:
    """A copy of the checkpoint whose config.json names ``version``."""
    shutil.copytree(checkpoint, dest)
    config = dest / "config.json"
    meta = json.loads(config.read_text())
    meta["version"] = version
    config.write_text(json.dumps(meta, indent=2) + "\n")
    return dest


def _server_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env["OMP_NUM_THREADS"] = "1"  # three servers share two cores
    return env


def _ferry(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferry", *args], capture_output=True, text=True, env=_server_env(), timeout=timeout
    )


def _wait_serving(replica: Replica, deadline: float) -> None:
    while time.monotonic() < deadline:
        if replica.process.poll() is not None:
            pytest.fail(
                f"ferry serve for {replica.version} exited with {replica.process.returncode}:\n{replica.log_tail()}"
            )
        result, _ = probe(replica.address, connect_timeout=1.0, rpc_timeout=2.0)
        if result == ProbeResult.SERVING:
            return
        time.sleep(0.5)
    pytest.fail(
        f"ferry serve for {replica.version} did not become healthy in {START_TIMEOUT_S:.0f}s:\n{replica.log_tail()}"
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def replicas(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Replica]]:
    root = tmp_path_factory.mktemp("scaleout")
    started: list[Replica] = []
    try:
        for i in range(REPLICAS):
            version = f"replica-{i}"
            model = _replica_model(tiny_checkpoint, root / version, version)
            port = _free_port()
            log = root / f"{version}.log"
            with open(log, "wb") as out:
                process = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "ferry",
                        "serve",
                        "--model",
                        str(model),
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                        "--metrics-port",
                        "0",
                        "--http-port",
                        "0",
                        "--device",
                        "cpu",
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=_server_env(),
                )
            started.append(Replica(version, f"127.0.0.1:{port}", process, log))
        deadline = time.monotonic() + START_TIMEOUT_S
        for replica in started:
            _wait_serving(replica, deadline)
        yield started
    finally:
        for replica in started:
            _stop(replica.process)


def _translate_one(client: TranslationClient, source: str) -> tuple[str, str]:
    (result,) = client.translate([source], "xx", "yy", beam_size=1, timeout=CALL_TIMEOUT_S)
    return result.text, result.model_version


def test_round_robin_client_spreads_requests_over_every_replica(
    replicas: list[Replica], tiny_pairs: list[tuple[str, str]]
) -> None:
    with TranslationClient([r.address for r in replicas], load_balancing="round_robin") as client:
        seen: Counter[str] = Counter()
        for i in range(10 * REPLICAS):
            source, expected = tiny_pairs[i % len(tiny_pairs)]
            text, version = _translate_one(client, source)
            assert text == expected
            seen[version] += 1
    assert set(seen) == {r.version for r in replicas}, f"calls reached only {dict(seen)}"


def test_health_command_reports_a_running_server(replicas: list[Replica]) -> None:
    out = _ferry("health", "--server", replicas[0].address)  # as a container HEALTHCHECK runs it
    assert out.returncode == int(ProbeResult.SERVING), out.stdout + out.stderr


def test_client_keeps_succeeding_while_a_replica_stops(
    replicas: list[Replica], tiny_pairs: list[tuple[str, str]]
) -> None:
    stopped, survivors = replicas[1], [replicas[0], replicas[2]]
    failures: list[tuple[str, str]] = []
    answered: Counter[str] = Counter()
    done = threading.Event()

    with TranslationClient([r.address for r in replicas], load_balancing="round_robin") as client:

        def load() -> None:
            # Bounded background traffic across the stop: at most 2000 calls, until told to end.
            for i in range(2000):
                if done.is_set():
                    return
                source, expected = tiny_pairs[i % len(tiny_pairs)]
                try:
                    text, version = _translate_one(client, source)
                except FerryError as exc:
                    failures.append((exc.code.name, exc.message))
                    continue
                if text != expected:
                    failures.append(("WRONG", f"{text!r} for {source!r}"))
                answered[version] += 1

        worker = threading.Thread(target=load, daemon=True)
        worker.start()
        try:
            time.sleep(1.0)  # calls in flight on every replica
            stopped.process.send_signal(signal.SIGTERM)
            exit_code = stopped.process.wait(timeout=120)
            before = sum(answered.values())
            deadline = time.monotonic() + 60
            while sum(answered.values()) < before + 2 * REPLICAS and time.monotonic() < deadline:
                time.sleep(0.2)  # traffic goes on after the replica is gone
        finally:
            done.set()
            worker.join(timeout=120)
        assert not worker.is_alive()
        assert exit_code == 0, f"{stopped.version} did not drain cleanly:\n{stopped.log_tail()}"
        assert not failures, f"calls failed while {stopped.version} stopped: {failures[:5]}"

        # Afterwards every call goes to the two survivors, and both take a share.
        after: Counter[str] = Counter()
        for i in range(6 * len(survivors)):
            source, expected = tiny_pairs[i % len(tiny_pairs)]
            text, version = _translate_one(client, source)
            assert text == expected
            after[version] += 1
    assert set(after) == {r.version for r in survivors}, f"calls after the stop reached {dict(after)}"

    out = _ferry("health", "--server", stopped.address)
    assert out.returncode == int(ProbeResult.CONNECTION_FAILURE), out.stdout + out.stderr
