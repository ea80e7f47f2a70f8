"""The client package on its own: no torch, target resolution, options, errors."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest
from ferry.client import FerryError, TranslationClient, decoding_options
from ferry.client.channel import resolve_target
from ferry.client.errors import status_code


def test_client_imports_no_torch() -> None:
    code = (
        "import sys, ferry.client, ferry.client.cli, ferry.commands.translate, ferry.commands.health; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'sentencepiece', 'numpy')); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize(
    ("target", "resolved"),
    [
        ("localhost:50051", "localhost:50051"),
        ("dns:///svc.ns:50051", "dns:///svc.ns:50051"),
        ("ipv4:127.0.0.1:5001,127.0.0.1:5002", "ipv4:127.0.0.1:5001,127.0.0.1:5002"),
        ("127.0.0.1:5001,127.0.0.2:5002", "ipv4:127.0.0.1:5001,127.0.0.2:5002"),
        (["127.0.0.1:5001", "127.0.0.1:5002"], "ipv4:127.0.0.1:5001,127.0.0.1:5002"),
        (["[::1]:5001", "[::1]:5002"], "ipv6:[::1]:5001,[::1]:5002"),
        (["10.0.0.1:5001"], "10.0.0.1:5001"),
    ],
)
def test_resolve_target(target: str | list[str], resolved: str) -> None:
    assert resolve_target(target) == resolved


@pytest.mark.parametrize(
    ("target", "needle"),
    [
        (["127.0.0.1:1", "nonsense"], "not HOST:PORT"),
        (["127.0.0.1:1", "[::1]:2"], "mixes IPv4 and IPv6"),
        ([], "target is empty"),
    ],
)
def test_resolve_target_errors(target: list[str], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        resolve_target(target)


def test_decoding_options_leave_unset_fields_unset() -> None:
    opts = decoding_options(beam_size=1)
    assert opts.HasField("beam_size") and opts.beam_size == 1
    assert not opts.HasField("max_length") and not opts.HasField("length_penalty")
    assert decoding_options(beam_size=0).HasField("beam_size")  # 0 is sent, and rejected by the server


def test_errors_carry_the_status_code() -> None:
    err = FerryError(grpc.StatusCode.UNAVAILABLE, "draining", request_id="7")
    assert err.retryable and err.code == grpc.StatusCode.UNAVAILABLE
    assert str(err) == "UNAVAILABLE (request 7): draining"
    assert not FerryError(grpc.StatusCode.INVALID_ARGUMENT, "x").retryable
    assert status_code(3) == grpc.StatusCode.INVALID_ARGUMENT
    assert status_code(999) == grpc.StatusCode.UNKNOWN


def test_argument_checks_happen_before_any_call() -> None:
    with TranslationClient("127.0.0.1:1") as client:
        with pytest.raises(TypeError, match="not a single string"):
            client.translate("hello")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="batch_size=0"):
            list(client.translate_stream(["a"], batch_size=0))
    with pytest.raises(ValueError, match="retries=-1"):
        TranslationClient("127.0.0.1:1", retries=-1)


def test_unreachable_server_is_unavailable_after_retries() -> None:
    with TranslationClient("127.0.0.1:1", retries=2, backoff=0.01, timeout=10) as client:
        with pytest.raises(FerryError) as err:
            client.translate(["a"], "xx", "yy")
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(FerryError) as err:
            list(client.translate_stream(["a"], "xx", "yy"))
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
