"""``EngineConfig`` (the limits of one engine), ``RequestLimits`` (the limits of one request) and
``ServerConfig`` (the server process). Pure Python (no torch, no grpc), so ``ferry serve --help`` takes its
defaults from here without loading a model."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class EngineConfig:
    """Limits of one engine (one model)."""

    max_batch_tokens: int = 8192
    """Token budget of the running batch: each running sentence reserves
    ``beam_size * (source tokens + output limit)`` tokens, the most attention positions its rows can
    hold. New sentences join only while the sum stays within this budget (one sentence over it still
    runs, alone). A reserved token holds K and V of every decoder layer: 24 KiB in float32 with
    d_model 512 and 6 layers, so 8192 tokens are ~200 MiB of cache (up to about twice that with
    source padding and capacity doubling)."""
    max_batch_rows: int = 128
    """Most decoder rows in the running batch (a sentence takes ``beam_size`` rows)."""
    max_queue_sentences: int = 4096
    """Most non-empty sentences waiting to be admitted; a request that does not fit gets
    ``QueueFullError`` (gRPC RESOURCE_EXHAUSTED) at once instead of waiting."""
    max_input_tokens: int | None = None
    """Most source tokens (EOS included) per text; ``None``: the model's ``max_positions``."""
    admit_batch: int = 8
    """While sentences are running, newcomers join once this many wait (one encoder batch for all of
    them instead of one per arrival) or after ``admit_every_steps`` steps, whichever comes first."""
    admit_every_steps: int = 4
    """Most decode steps a newcomer waits for company before it joins (1 = join at the next step)."""
    newcomer_reserve: float = 0.125
    """Fraction of the row and token budgets that a request with sentences already running may not
    fill: it is kept for requests with nothing running, so a short request that arrives while a long
    one fills the batch starts at the next admission instead of waiting for a running sentence to
    finish. Requests of one sentence each (the usual load) use the whole budget."""

    def __post_init__(self) -> None:
        for name in ("max_batch_tokens", "max_batch_rows", "max_queue_sentences"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"EngineConfig.{name}={value!r} is invalid; it must be an integer >= 1")
        if not 0.0 <= self.newcomer_reserve < 1.0:
            raise ValueError(f"EngineConfig.newcomer_reserve={self.newcomer_reserve!r} is invalid; use 0 <= x < 1")
        if self.max_input_tokens is not None and (isinstance(self.max_input_tokens, bool) or self.max_input_tokens < 1):
            raise ValueError(f"EngineConfig.max_input_tokens={self.max_input_tokens!r} is invalid; use >= 1 or None")


@dataclass(frozen=True)
class RequestLimits:
    """Per-request limits enforced before any model work (the model adds its token limit)."""

    max_texts: int = 1024
    """Most texts in one request."""
    max_text_chars: int = 10_000
    """Most characters in one text."""
    max_message_bytes: int = 16 * 1024 * 1024
    """Largest request message (gRPC) or body (HTTP) in bytes."""
    stream_window: int = 16
    """Batches of one TranslateStream read but not yet sent back (running or waiting to be sent);
    the server reads no further messages until the client has taken a response (gRPC flow
    control then slows the sender)."""
    stream_unsent_bytes: int = 4 * 1024 * 1024
    """The server reads no further messages from a TranslateStream while this many bytes of its
    responses wait to be sent (a client that does not read)."""

    def __post_init__(self) -> None:
        for name in ("max_texts", "max_text_chars", "max_message_bytes", "stream_window", "stream_unsent_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} is out of range; allowed: >= 1")


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    """Address the gRPC port listens on; loopback unless told otherwise (containers: 0.0.0.0)."""
    port: int = 50051
    """0 picks a free port (``FerryServer.start`` returns it)."""
    metrics_port: int = 0
    """HTTP port for Prometheus ``/metrics``; 0 = off."""
    http_port: int | None = None
    """Port of the LibreTranslate-compatible HTTP API and web page (``ferry.server.web``) on ``host``,
    over the same engines, limits and auth; None = off, 0 = any free port (``FerryServer.http_port``)."""
    metrics_host: str = "127.0.0.1"
    """Address ``/metrics`` listens on; it has no auth, so loopback unless told otherwise."""
    limits: RequestLimits = field(default_factory=RequestLimits)
    drain_timeout: float = 20.0
    """Seconds accepted calls get to finish after SIGTERM."""
    tls_cert: str | Path | None = None
    tls_key: str | Path | None = None
    auth_token: str | None = None
    """Clients must send ``authorization: Bearer <token>`` metadata (health checks excepted)."""
    engines: int = 0
    """Engines per model, each decoding its own batch on its own thread over the one copy of the
    weights; a request goes to the least busy one (``EnginePool``). 0 = one per CPU core (at most
    ``MAX_AUTO_ENGINES``) on CPU, 1 on a GPU. Under concurrent load this keeps every core busy with
    whole decode steps; ``engines=1`` with ``threads`` = cores gives one large request all cores."""
    threads: int = 0
    """torch intra-op threads the engines share: an engine working alone uses all of them, several
    busy engines split them evenly; 0 = ``OMP_NUM_THREADS`` when the environment sets it, else the
    CPU cores."""

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both --tls-cert and --tls-key (PEM files); give both or neither")
        for name, least in (("engines", 0), ("threads", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name}={value!r} is out of range; allowed: integers >= {least}")
        if self.drain_timeout < 0:
            raise ValueError(f"drain_timeout={self.drain_timeout} is out of range; allowed: >= 0 seconds")

    def engine_count(self, cores: int, *, gpu: bool) -> int:
        """Engines per model: ``engines``, or for 0 one per core (at most ``MAX_AUTO_ENGINES``) on
        CPU and 1 on a GPU."""
        if self.engines:
            return self.engines
        return 1 if gpu else max(1, min(cores, MAX_AUTO_ENGINES))

    def intra_op_threads(self, cores: int, omp_num_threads: str | None = None) -> int:
        """torch threads in all: ``threads``, else a valid ``OMP_NUM_THREADS`` value (its first level),
        else ``cores``."""
        if self.threads:
            return self.threads
        first = (omp_num_threads or "").split(",")[0].strip()
        if first.isdigit() and int(first) > 0:
            return int(first)
        return max(1, cores)


MAX_AUTO_ENGINES = 8
"""Most engines per model that ``ServerConfig.engines=0`` picks (each holds its own caches)."""


def usable_cores(cgroup_cpu_max: str | os.PathLike[str] = "/sys/fs/cgroup/cpu.max") -> int:
    """CPU cores this process may use: its affinity mask (a cpuset), capped by a cgroup v2 CPU quota
    (``docker run --cpus 2`` keeps every host core in the mask but allows two cores' worth of time)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        with open(cgroup_cpu_max) as f:
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        return cores
    if quota == "max" or not quota.isdigit() or not period.isdigit() or int(period) == 0:
        return cores
    return max(1, min(cores, -(-int(quota) // int(period))))
