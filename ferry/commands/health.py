"""``ferry health``: a grpc.health.v1 probe with grpc_health_probe's exit codes
(0 serving, 1 bad arguments, 2 connection failure, 3 RPC failure, 4 not serving)."""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server",
        default=os.environ.get("FERRY_SERVER", "localhost:50051"),
        metavar="HOST:PORT",
        help="server to probe (FERRY_SERVER; default localhost:50051)",
    )
    p.add_argument("--service", default="", help="service name; default '' (the whole server)")
    p.add_argument("--connect-timeout", type=float, default=2.0, help="seconds to connect (default 2)")
    p.add_argument("--rpc-timeout", type=float, default=2.0, help="seconds for the check (default 2)")
    p.add_argument("--tls", action="store_true", help="connect with TLS (system roots unless --tls-ca)")
    p.add_argument("--tls-ca", help="CA certificate file (implies --tls)")
    p.add_argument("--tls-server-name", help="override the name checked against the server certificate")
    p.add_argument("--token", help="bearer token (or FERRY_TOKEN); health checks need none by default")


def run(args: argparse.Namespace) -> int:
    from ferry.client.health import ProbeResult, probe

    result, message = probe(
        args.server,
        args.service,
        connect_timeout=args.connect_timeout,
        rpc_timeout=args.rpc_timeout,
        tls=args.tls,
        ca_cert=args.tls_ca,
        server_name=args.tls_server_name,
        token=args.token or os.environ.get("FERRY_TOKEN"),
    )
    print(message, file=sys.stdout if result == ProbeResult.SERVING else sys.stderr)
    return int(result)
