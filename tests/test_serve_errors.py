"""``ferry serve`` on broken model directories and bad settings: one ``ferry serve: error: <file>:
<problem>`` line and exit code 2, never a traceback; safe listening defaults; the token from a file."""

from __future__ import annotations

import gc
import json
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from ferry.server.app import ServerConfig

from ferry.cli import build_parser, main

Breakage = Callable[[Path], tuple[str, str]]
"""Breaks a copy of the model directory; returns (file named in the error, words of the problem)."""


def truncate_weights(root: Path) -> tuple[str, str]:
    weights = root / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return str(weights), "corrupt or truncated safetensors file"


def garbage_weights(root: Path) -> tuple[str, str]:
    (root / "model.safetensors").write_bytes(b"\x00" * 5)
    return str(root / "model.safetensors"), "corrupt or truncated safetensors file"


def missing_weights(root: Path) -> tuple[str, str]:
    (root / "model.safetensors").unlink()
    return str(root / "model.safetensors"), "weights file missing"


def missing_tokenizer(root: Path) -> tuple[str, str]:
    (root / "spm.model").unlink()
    return str(root / "spm.model"), "tokenizer file missing"


def corrupt_tokenizer(root: Path) -> tuple[str, str]:
    (root / "spm.model").write_bytes(b"not a sentencepiece model")
    return str(root / "spm.model"), "not a valid SentencePiece model"


def negative_max_positions(root: Path) -> tuple[str, str]:
    meta = json.loads((root / "config.json").read_text())
    meta["model"]["max_positions"] = -5
    (root / "config.json").write_text(json.dumps(meta))
    return str(root / "config.json"), "max_positions=-5 is invalid: must be an integer >= 1"


def zero_heads(root: Path) -> tuple[str, str]:
    meta = json.loads((root / "config.json").read_text())
    meta["model"]["n_heads"] = 0
    (root / "config.json").write_text(json.dumps(meta))
    return str(root / "config.json"), "n_heads=0 is invalid"


def truncated_config(root: Path) -> tuple[str, str]:
    text = (root / "config.json").read_text()
    (root / "config.json").write_text(text[: len(text) // 2])
    return str(root / "config.json"), "not readable JSON"


@pytest.mark.parametrize(
    "breakage",
    [
        truncate_weights,
        garbage_weights,
        missing_weights,
        missing_tokenizer,
        corrupt_tokenizer,
        negative_max_positions,
        zero_heads,
        truncated_config,
    ],
)
def test_broken_model_directory_is_one_line_and_exit_2(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], breakage: Breakage
) -> None:
    root = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, root)
    path, problem = breakage(root)
    code = main(["serve", "--model", str(root), "--device", "cpu", "--port", "0", "--metrics-port", "0"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("ferry serve: error: ")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"ferry serve: error: {path}: "), err
    assert problem in lines[0], err


def test_auth_token_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ferry.server.app import read_token_file

    token = tmp_path / "token"
    token.write_text("s3cret\n")
    assert read_token_file(token) == "s3cret"
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ValueError, match=f"^{empty}: the auth token file is empty"):
        read_token_file(empty)
    with pytest.raises(ValueError, match=f"^{tmp_path / 'absent'}: cannot read the auth token file"):
        read_token_file(tmp_path / "absent")
    # Both forms at once is an operator error, reported before any model is loaded.
    code = main(["serve", "--model", str(tmp_path), "--auth-token", "a", "--auth-token-file", str(token)])
    assert code == 2
    assert "give the auth token once" in capsys.readouterr().err


def test_listening_defaults_are_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FERRY_HOST", "FERRY_METRICS_HOST", "FERRY_AUTH_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.metrics_host, args.auth_token_file) == ("127.0.0.1", "127.0.0.1", None)
    assert (ServerConfig().host, ServerConfig().metrics_host) == ("127.0.0.1", "127.0.0.1")
    monkeypatch.setenv("FERRY_HOST", "0.0.0.0")
    monkeypatch.setenv("FERRY_METRICS_HOST", "0.0.0.0")
    monkeypatch.setenv("FERRY_AUTH_TOKEN_FILE", "/run/secrets/token")
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.metrics_host, args.auth_token_file) == ("0.0.0.0", "0.0.0.0", "/run/secrets/token")


@pytest.mark.parametrize("which", ["--port", "--metrics-port"])
def test_a_busy_port_is_one_line_and_exit_2(
    tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str], which: str
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ports = {"--port": "0", "--metrics-port": "0", "--http-port": "0", which: str(port)}
        argv = ["serve", "--model", str(tiny_checkpoint), "--device", "cpu", "--drain-timeout", "0"]
        code = main([*argv, *(item for pair in ports.items() for item in pair)])
    gc.collect()  # a leaked gRPC server would complain here, after its loop closed
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "never awaited" not in err, err
    assert f"127.0.0.1:{port}" in err and "is the port in use?" in err, err


@pytest.mark.parametrize(("flag", "value"), [("--engines", "-1"), ("--threads", "-3")])
def test_bad_engine_counts_are_one_line_and_exit_2(
    tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    code = main(["serve", "--model", str(tiny_checkpoint), "--device", "cpu", flag, value])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert f"{flag[2:]}={value} is out of range; allowed: integers >= 0" in err, err
