"""Opening a gRPC channel to one or several ferry servers (TLS, load balancing, message limits)."""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
SERVICE_NAME = "ferry.v1.TranslationService"


def _split_host_port(address: str) -> tuple[str, str]:
    address = address.strip()
    for scheme in ("dns:///", "ipv4:", "ipv6:"):
        address = address.removeprefix(scheme)
    if address.startswith("["):  # [::1]:50051
        host, _, port = address[1:].partition("]:")
    else:
        host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address {address!r} is not HOST:PORT (e.g. 127.0.0.1:50051 or [::1]:50051)")
    return host, port


def _ip_addresses(host: str, port: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ValueError(f"cannot resolve host {host!r}: {exc}") from exc
    seen: dict[str, ipaddress.IPv4Address | ipaddress.IPv6Address] = {}
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]))
        seen.setdefault(str(ip), ip)
    return list(seen.values())


def resolve_target(target: str | Sequence[str]) -> str:
    """A gRPC target string. A list of ``host:port`` (or one comma-separated string of them)
    becomes an ``ipv4:a:p,b:p`` (or ``ipv6:``) target, host names resolved here, so one channel
    spans every replica. A single address or any other target string is passed through."""
    if isinstance(target, str):
        if "," not in target or target.startswith(("ipv4:", "ipv6:")):
            return target
        target = target.split(",")
    addresses = [a.strip() for a in target if a.strip()]
    if not addresses:
        raise ValueError("target is empty; give HOST:PORT or a list of them")
    if len(addresses) == 1:
        return addresses[0]
    v4: list[str] = []
    v6: list[str] = []
    for address in addresses:
        host, port = _split_host_port(address)
        for ip in _ip_addresses(host, port):
            if ip.version == 4:
                v4.append(f"{ip}:{port}")
            else:
                v6.append(f"[{ip}]:{port}")
    if v4 and v6:
        raise ValueError(f"target {addresses} mixes IPv4 and IPv6 addresses; gRPC needs one family per channel")
    return f"ipv4:{','.join(v4)}" if v4 else f"ipv6:{','.join(v6)}"


def _read(value: str | Path | bytes | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


def open_channel(
    target: str | Sequence[str],
    *,
    tls: bool = False,
    ca_cert: str | Path | bytes | None = None,
    client_cert: str | Path | bytes | None = None,
    client_key: str | Path | bytes | None = None,
    server_name: str | None = None,
    load_balancing: str | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A channel; TLS when ``tls`` or any certificate is given (``ca_cert`` None = system roots).
    ``load_balancing="round_robin"`` spreads calls over every address of the target."""
    opts: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]
    if load_balancing:
        # healthCheckConfig: the channel watches each backend's grpc.health.v1 status and stops
        # routing to a replica as soon as it reports NOT_SERVING (draining), before it goes away.
        config = {"loadBalancingConfig": [{load_balancing: {}}], "healthCheckConfig": {"serviceName": ""}}
        opts.append(("grpc.service_config", json.dumps(config)))
    if server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
    opts.extend(options)
    resolved = resolve_target(target)
    if tls or ca_cert is not None or client_cert is not None:
        creds = grpc.ssl_channel_credentials(
            root_certificates=_read(ca_cert),
            private_key=_read(client_key),
            certificate_chain=_read(client_cert),
        )
        return grpc.secure_channel(resolved, creds, options=opts)
    return grpc.insecure_channel(resolved, options=opts)
