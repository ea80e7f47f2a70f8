"""``ferry serve``: the gRPC translation server. Every flag defaults to a FERRY_* environment
variable (containers configure by env), then to the value shown in ``--help``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

LOG_LEVELS = ("debug", "info", "warning", "error")
_RECORD_FIELDS = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def _env(name: str, default: str | float | None) -> str | float | None:
    return os.environ.get(name, default)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ferry.server.config import EngineConfig, RequestLimits, ServerConfig  # light: no torch, no grpc

    p.add_argument(
        "--model",
        action="append",
        metavar="DIR",
        help="model directory, repeatable (one per language pair); env FERRY_MODEL (comma-separated); "
        "default: the shipped model",
    )
    p.add_argument(
        "--host",
        default=_env("FERRY_HOST", ServerConfig.host),
        help="address the gRPC port listens on (FERRY_HOST); 0.0.0.0 for every interface (containers)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=_env("FERRY_PORT", ServerConfig.port),
        help="gRPC port, 0 = any free (FERRY_PORT; default %(default)s)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=_env("FERRY_METRICS_PORT", "9090"),
        help="Prometheus /metrics HTTP port, 0 = off (FERRY_METRICS_PORT)",
    )
    p.add_argument(
        "--metrics-host",
        default=_env("FERRY_METRICS_HOST", ServerConfig.metrics_host),
        help="address /metrics listens on; it has no auth (FERRY_METRICS_HOST); 0.0.0.0 for Prometheus scrapes",
    )
    p.add_argument(
        "--http-port",
        type=int,
        default=_env("FERRY_HTTP_PORT", "8080"),
        help="LibreTranslate-compatible HTTP API and web page on --host, 0 = off (FERRY_HTTP_PORT)",
    )
    p.add_argument("--device", default=_env("FERRY_DEVICE", "auto"), help="auto, cpu or cuda (FERRY_DEVICE)")
    p.add_argument(
        "--dtype",
        default=_env("FERRY_DTYPE", None),
        help="float32, float16 or bfloat16 (GPU), int8 (CPU; not batch-invariant) (FERRY_DTYPE)",
    )
    p.add_argument(
        "--engines",
        type=int,
        default=_env("FERRY_ENGINES", ServerConfig.engines),
        help="engines per model, each decoding its own batch on its own thread; 0 = one per CPU core on CPU, "
        "1 on a GPU (FERRY_ENGINES; default %(default)s)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=_env("FERRY_THREADS", ServerConfig.threads),
        help="torch intra-op threads the engines share (one busy engine uses all), 0 = OMP_NUM_THREADS or the "
        "CPU cores (FERRY_THREADS; default %(default)s)",
    )
    p.add_argument(
        "--max-batch-tokens",
        type=int,
        default=_env("FERRY_MAX_BATCH_TOKENS", EngineConfig.max_batch_tokens),
        help="token budget of the running batch (FERRY_MAX_BATCH_TOKENS; default %(default)s)",
    )
    p.add_argument(
        "--max-batch-rows",
        type=int,
        default=_env("FERRY_MAX_BATCH_ROWS", EngineConfig.max_batch_rows),
        help="most decoder rows in the running batch (FERRY_MAX_BATCH_ROWS; default %(default)s)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=_env("FERRY_MAX_QUEUE", EngineConfig.max_queue_sentences),
        help="most sentences waiting per engine; more gets RESOURCE_EXHAUSTED (FERRY_MAX_QUEUE; default %(default)s)",
    )
    p.add_argument(
        "--max-input-tokens",
        type=int,
        default=_env("FERRY_MAX_INPUT_TOKENS", EngineConfig.max_input_tokens),
        help="most source tokens per text (FERRY_MAX_INPUT_TOKENS); default: the model's limit",
    )
    p.add_argument(
        "--max-texts",
        type=int,
        default=_env("FERRY_MAX_TEXTS", RequestLimits.max_texts),
        help="texts per request (FERRY_MAX_TEXTS; default %(default)s)",
    )
    p.add_argument(
        "--max-text-chars",
        type=int,
        default=_env("FERRY_MAX_TEXT_CHARS", RequestLimits.max_text_chars),
        help="characters per text (FERRY_MAX_TEXT_CHARS; default %(default)s)",
    )
    p.add_argument(
        "--max-message-bytes",
        type=int,
        default=_env("FERRY_MAX_MESSAGE_BYTES", RequestLimits.max_message_bytes),
        help="largest request message; larger gets RESOURCE_EXHAUSTED (FERRY_MAX_MESSAGE_BYTES; default %(default)s)",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=_env("FERRY_DRAIN_TIMEOUT", ServerConfig.drain_timeout),
        help="seconds accepted requests get to finish on SIGTERM (FERRY_DRAIN_TIMEOUT; default %(default)s)",
    )
    p.add_argument("--tls-cert", default=_env("FERRY_TLS_CERT", None), help="PEM certificate chain (FERRY_TLS_CERT)")
    p.add_argument("--tls-key", default=_env("FERRY_TLS_KEY", None), help="PEM private key (FERRY_TLS_KEY)")
    p.add_argument(
        "--auth-token",
        default=_env("FERRY_AUTH_TOKEN", None),
        help="require 'authorization: Bearer TOKEN' metadata (FERRY_AUTH_TOKEN; prefer --auth-token-file)",
    )
    p.add_argument(
        "--auth-token-file",
        default=_env("FERRY_AUTH_TOKEN_FILE", None),
        help="read the token from this file, keeping it off the command line (FERRY_AUTH_TOKEN_FILE)",
    )
    p.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=_env("FERRY_LOG_LEVEL", None),
        help="log level (FERRY_LOG_LEVEL); default warning, or as -v sets it",
    )
    p.add_argument(
        "--log-json",
        action="store_true",
        default=os.environ.get("FERRY_LOG_JSON", "").lower() in ("1", "true", "yes"),
        help="one JSON object per log line (FERRY_LOG_JSON=1)",
    )


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", ...extra fields}`` per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _RECORD_FIELDS})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str | None, as_json: bool) -> None:
    root = logging.getLogger()
    if level:
        root.setLevel(level.upper())
    if as_json:
        for handler in root.handlers:
            handler.setFormatter(JsonFormatter())


def model_dirs(args: argparse.Namespace) -> list[Path]:
    from ferry import default_model_dirs

    if args.model:
        return [Path(m) for m in args.model]
    env = os.environ.get("FERRY_MODEL", "")
    if env.strip():
        return [Path(m.strip()) for m in env.split(",") if m.strip()]
    defaults = [d for d in default_model_dirs() if d.is_dir()]
    if not defaults:
        raise FileNotFoundError(
            "no --model given and no default model exists (models/*/ or $FERRY_DEFAULT_MODEL); pass --model DIR"
        )
    return defaults


def run(args: argparse.Namespace) -> int:
    import asyncio

    import torch

    from ferry.model.translator import resolve_device
    from ferry.server.app import FerryServer, read_token_file, serve
    from ferry.server.config import RequestLimits, ServerConfig, usable_cores
    from ferry.server.engine import EngineConfig
    from ferry.server.registry import ModelRegistry

    configure_logging(args.log_level, args.log_json)
    if args.auth_token and args.auth_token_file:
        raise ValueError("give the auth token once: --auth-token (FERRY_AUTH_TOKEN) or --auth-token-file, not both")
    auth_token = read_token_file(args.auth_token_file) if args.auth_token_file else args.auth_token or None
    config = ServerConfig(
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        http_port=args.http_port or None,
        limits=RequestLimits(
            max_texts=args.max_texts, max_text_chars=args.max_text_chars, max_message_bytes=args.max_message_bytes
        ),
        drain_timeout=args.drain_timeout,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        auth_token=auth_token,
        engines=args.engines,
        threads=args.threads,
    )
    engine_config = EngineConfig(
        max_batch_tokens=args.max_batch_tokens,
        max_batch_rows=args.max_batch_rows,
        max_queue_sentences=args.max_queue,
        max_input_tokens=args.max_input_tokens,
    )
    cores = usable_cores()
    gpu = resolve_device(args.device).type == "cuda"  # "auto", "cuda:1" … as the model loader reads them
    engines = config.engine_count(cores, gpu=gpu)
    threads = config.intra_op_threads(cores, os.environ.get("OMP_NUM_THREADS"))
    torch.set_num_threads(max(1, threads // engines))
    registry = ModelRegistry.load(
        model_dirs(args), device=args.device, dtype=args.dtype, config=engine_config, engines=engines, threads=threads
    )
    pairs = ", ".join(m.pair for m in registry)

    def ready(server: FerryServer) -> None:
        if server.metrics_port:
            print(f"ferry metrics on http://{args.metrics_host}:{server.metrics_port}/metrics", file=sys.stderr)
        if server.http_port:
            url = f"{'https' if args.tls_cert else 'http'}://{_url_host(args.host)}:{server.http_port}"
            print(f"ferry HTTP API (LibreTranslate-compatible) on {url}; web page: {url}/", file=sys.stderr)
        print(
            f"ferry engines: {engines} per model sharing {threads} torch thread(s) (--engines, --threads)",
            file=sys.stderr,
        )
        print(f"ferry serving {pairs} on {args.host}:{server.port}", file=sys.stderr, flush=True)

    finished = asyncio.run(serve(registry, config, ready))
    print(f"ferry stopped ({'drained' if finished else 'drain timeout: some calls were cancelled'})", file=sys.stderr)
    return 0


def _url_host(host: str) -> str:
    """``host`` as it goes in a URL a person can open: loopback for a wildcard address."""
    if host in ("", "0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
