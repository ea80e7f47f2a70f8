"""``ferry translate --server`` and ``ferry health`` against an in-process server; ``ferry serve``'s
flags and their FERRY_* environment defaults."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from ferry.server.app import SERVICE_NAME, ServerConfig, ServerThread
from ferry.server.registry import ModelRegistry

from ferry.cli import build_parser, main


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path) -> Iterator[ServerThread]:
    registry = ModelRegistry.load([tiny_checkpoint], device="cpu")
    with ServerThread(registry, ServerConfig(host="127.0.0.1", port=0, auth_token="tok")) as thread:
        yield thread


def test_translate_file_keeps_order(server: ServerThread, tiny_pairs: list, tmp_path: Path) -> None:
    src, out = tmp_path / "in.txt", tmp_path / "out.txt"
    lines = [s for s, _ in tiny_pairs] + ["", tiny_pairs[0][0]]
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    argv = ["translate", "--server", f"127.0.0.1:{server.port}", "-s", "xx", "-t", "yy", "--token", "tok"]
    assert main([*argv, "--batch-size", "5", "--beam-size", "2", "-i", str(src), "-o", str(out)]) == 0
    assert out.read_text(encoding="utf-8").splitlines() == [t for _, t in tiny_pairs] + ["", tiny_pairs[0][1]]


def test_translate_stdin_with_scores(
    server: ServerThread, tiny_pairs: list, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FERRY_TOKEN", "tok")
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(f"{s}\n" for s, _ in tiny_pairs[:3])))
    assert main(["translate", "--server", f"127.0.0.1:{server.port}", "-s", "xx", "-t", "yy", "--scores"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [text for _, text in rows] == [t for _, t in tiny_pairs[:3]]
    assert all(float(score) <= 0 for score, _ in rows)


def test_translate_reports_server_errors(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("red\n"))
    argv = ["translate", "--server", f"127.0.0.1:{server.port}", "-s", "en", "-t", "yy", "--token", "tok"]
    assert main(argv) == 1
    assert "INVALID_ARGUMENT" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", io.StringIO("red\n"))
    assert main(["translate", "--server", f"127.0.0.1:{server.port}", "-s", "xx", "-t", "yy", "--token", "bad"]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err


def test_health_exit_codes(tiny_checkpoint: Path) -> None:
    registry = ModelRegistry.load([tiny_checkpoint], device="cpu")
    thread = ServerThread(registry, ServerConfig(host="127.0.0.1", port=0))
    thread.start()
    address = f"127.0.0.1:{thread.port}"
    try:
        assert main(["health", "--server", address]) == 0
        assert main(["health", "--server", address, "--service", SERVICE_NAME]) == 0
        assert main(["health", "--server", address, "--service", "no.such.Service"]) == 3
        assert thread.server is not None
        thread.run(thread.server.stop_admitting())  # the first thing SIGTERM does
        assert main(["health", "--server", address]) == 4
    finally:
        thread.stop(drain_timeout=0)
    assert main(["health", "--server", address, "--connect-timeout", "0.5"]) == 2


def test_serve_flags_default_to_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_PORT", "6000")
    monkeypatch.setenv("FERRY_METRICS_PORT", "0")
    monkeypatch.setenv("FERRY_DRAIN_TIMEOUT", "3.5")
    monkeypatch.setenv("FERRY_AUTH_TOKEN", "secret")
    monkeypatch.setenv("FERRY_LOG_JSON", "1")
    monkeypatch.delenv("FERRY_HOST", raising=False)
    monkeypatch.delenv("FERRY_METRICS_HOST", raising=False)
    args = build_parser().parse_args(["serve", "--max-texts", "7"])
    assert (args.port, args.metrics_port, args.drain_timeout) == (6000, 0, 3.5)
    assert (args.auth_token, args.log_json, args.max_texts) == ("secret", True, 7)
    assert (args.host, args.metrics_host) == ("127.0.0.1", "127.0.0.1")  # loopback unless FERRY_HOST says otherwise
    assert build_parser().parse_args(["serve", "--port", "7000"]).port == 7000


def test_serve_without_a_model_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FERRY_MODEL", raising=False)
    monkeypatch.setenv("FERRY_DEFAULT_MODEL", str(tmp_path / "missing"))
    from ferry.commands.serve import model_dirs

    with pytest.raises(FileNotFoundError, match="pass --model DIR"):
        model_dirs(build_parser().parse_args(["serve"]))
