#!/usr/bin/env python3
"""Soak test: N clients for T seconds against a ``ferry serve`` process on loopback, mixing good
requests (greedy and beam, unary and streamed), malformed ones, ones whose deadline passes,
cancelled streams and streams that are never read, with one SIGTERM + restart half-way.

    python bench/soak.py --model models/en-de --clients 64 --duration 60 \\
        --json bench/results/soak.json --plot docs/soak-rss.png

Every good response is checked against a reference translation made in-process first (the same
model, ``Translator.translate_batch``). Reports lost (good requests that did not succeed, after the
client's own retries), wrong (succeeded with a different translation), a histogram of status codes
per kind of request, p50/p99 latency of good requests, and server RSS (plus decoder-cache bytes from
``/metrics``) over time, plotted to a PNG. Bounded: it stops after ``--duration`` seconds (plus the
drain) and the server only ever listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ferry.client import FerryError, TranslationClient
from ferry.proto.v1 import translation_pb2 as pb
from load import FALLBACK_SENTENCES

SENTENCES = [
    *FALLBACK_SENTENCES,
    "Two dogs play in the grass.",
    "A child is eating an apple.",
    "A woman is walking down the street.",
    "Three men are working on a roof.",
    "A little girl climbs a tree.",
    "The man is reading a newspaper on a bench.",
    "A group of children are playing soccer in a park.",
    "A cyclist rides through the city at night.",
]
KINDS = {
    "greedy": 28,
    "beam": 24,
    "stream": 12,
    "malformed": 9,
    "deadline": 9,
    "cancelled_stream": 9,
    "unread_stream": 9,
}
"""Kind of request -> weight in the mix."""
GOOD = ("greedy", "beam", "stream")
EXPECTED = {
    "greedy": {"OK"},
    "beam": {"OK"},
    "stream": {"OK"},
    "malformed": {"INVALID_ARGUMENT", "UNAVAILABLE"},
    "deadline": {"DEADLINE_EXCEEDED", "OK", "UNAVAILABLE"},
    "cancelled_stream": {"CANCELLED", "UNAVAILABLE"},
    "unread_stream": {"CANCELLED", "UNAVAILABLE"},
}
"""Codes each kind may end with. Raw calls (no client retries) may meet the restart: UNAVAILABLE."""
UNDECODABLE = b"\x0a\xff\x01"
STREAM_METHOD = "/ferry.v1.TranslationService/TranslateStream"
TRANSLATE_METHOD = "/ferry.v1.TranslationService/Translate"


@dataclass
class Outcome:
    kind: str
    code: str
    seconds: float
    at: float
    """Start, seconds since the soak began."""
    checked: int = 0
    wrong: int = 0


@dataclass
class Sample:
    at: float
    rss_mb: float
    cache_mb: float
    server: int
    """0 before the restart, 1 after."""


@dataclass
class Restart:
    sigterm_at: float = 0.0
    exit_code: int | None = None
    drain_seconds: float = 0.0
    ready_at: float = 0.0
    unavailable_seconds: float = 0.0


@dataclass
class References:
    greedy: dict[str, str] = field(default_factory=dict)
    beam: dict[str, str] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def references(model: str) -> References:
    from ferry.model.translator import Translator

    translator = Translator(model, "cpu")
    refs = References()
    refs.greedy = {s: r.text for s, r in zip(SENTENCES, translator.translate_batch(SENTENCES, beam_size=1))}
    refs.beam = {s: r.text for s, r in zip(SENTENCES, translator.translate_batch(SENTENCES, beam_size=4))}
    return refs


class ServerProcess:
    """``ferry serve`` on 127.0.0.1 in a child process; stderr is drained on a thread."""

    def __init__(self, model: str, port: int, metrics_port: int, drain_timeout: float) -> None:
        self.cmd = [sys.executable, "-m", "ferry", "serve", "--model", model, "--device", "cpu"]
        self.cmd += ["--host", "127.0.0.1", "--port", str(port), "--metrics-host", "127.0.0.1"]
        self.cmd += ["--metrics-port", str(metrics_port), "--drain-timeout", str(drain_timeout), "--http-port", "0"]
        self.proc: subprocess.Popen[str] | None = None
        self.log: list[str] = []

    def start(self, timeout: float = 300.0) -> None:
        proc = subprocess.Popen(self.cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self.proc = proc
        lines: queue.Queue[str] = queue.Queue()

        def pump() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                self.log.append(line)
                lines.put(line)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if lines.get(timeout=0.5).startswith("ferry serving"):
                    return
            except queue.Empty:
                if proc.poll() is not None:
                    break
        proc.kill()
        raise RuntimeError("ferry serve did not start:\n" + "".join(self.log[-40:]))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float = 120.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cache_mb(metrics_port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("ferry_cache_bytes{")) / (
        1024 * 1024
    )


class Worker:
    """One client: requests of a random kind, one at a time, until the end."""

    def __init__(
        self,
        index: int,
        address: str,
        refs: References,
        start: float,
        stop_at: float,
        retry_timeout: float,
        kinds: dict[str, int] = KINDS,
    ) -> None:
        self.rng = random.Random(index)
        self.kinds = kinds
        self.retry_timeout = retry_timeout
        self.address = address
        self.refs = refs
        self.start = start
        self.stop_at = stop_at
        self.outcomes: list[Outcome] = []
        self.wrong_examples: list[dict[str, str]] = []

    def run(self) -> None:
        kinds, weights = list(self.kinds), list(self.kinds.values())
        client = TranslationClient(self.address, timeout=120, retry_timeout=self.retry_timeout)
        with client, grpc.insecure_channel(self.address) as channel:
            while time.monotonic() < self.stop_at:
                kind = self.rng.choices(kinds, weights)[0]
                began = time.monotonic()
                outcome = Outcome(kind, "OK", 0.0, began - self.start)
                try:
                    getattr(self, kind)(client, channel, outcome)
                except FerryError as err:
                    outcome.code = err.code.name
                except grpc.RpcError as err:
                    outcome.code = err.code().name if isinstance(err, grpc.Call) else "UNKNOWN"
                except Exception as exc:  # a bug in the soak or the client: report it, keep going
                    outcome.code = f"client:{type(exc).__name__}"
                outcome.seconds = time.monotonic() - began
                self.outcomes.append(outcome)

    def _check(self, outcome: Outcome, sources: list[str], texts: list[str], refs: dict[str, str]) -> None:
        outcome.checked += len(sources)
        outcome.wrong += abs(len(sources) - len(texts))
        for source, text in zip(sources, texts):
            if refs[source] != text:
                outcome.wrong += 1
                self.wrong_examples.append(
                    {"kind": outcome.kind, "source": source, "expected": refs[source], "got": text}
                )

    def greedy(self, client: TranslationClient, channel: grpc.Channel, outcome: Outcome) -> None:
        sources = self.rng.sample(SENTENCES, self.rng.randint(1, 4))
        self._check(
            outcome, sources, [t.text for t in client.translate(sources, "en", "de", beam_size=1)], self.refs.greedy
        )

    def beam(self, client: TranslationClient, channel: grpc.Channel, outcome: Outcome) -> None:
        sources = self.rng.sample(SENTENCES, self.rng.randint(1, 4))
        self._check(
            outcome, sources, [t.text for t in client.translate(sources, "en", "de", beam_size=4)], self.refs.beam
        )

    def stream(self, client: TranslationClient, channel: grpc.Channel, outcome: Outcome) -> None:
        sources = self.rng.choices(SENTENCES, k=self.rng.randint(8, 24))
        beam = self.rng.choice((1, 4))
        texts = [t.text for t in client.translate_stream(sources, "en", "de", batch_size=4, beam_size=beam)]
        self._check(outcome, sources, texts, self.refs.greedy if beam == 1 else self.refs.beam)

    def malformed(self, client: TranslationClient, channel: grpc.Channel, outcome: Outcome) -> None:
        if self.rng.random() < 0.5:
            call = channel.unary_unary(TRANSLATE_METHOD, request_serializer=None, response_deserializer=None)
            call(UNDECODABLE, timeout=30)
        else:
            client.translate(["A dog runs."], "en", "de", beam_size=0)

    def deadline(self, client: TranslationClient, channel: grpc.Channel, outcome: Outcome) -> None:
        sources = self.rng.choices(SENTENCES, k=12)
        self._check(
            outcome, sources, [t.text for t in client.translate(sources, "en", "de", timeout=0.02)], self.refs.beam
        )

    def _requests(self, batches: int) -> Iterator[pb.TranslateRequest]:
        for i in range(batches):
            texts = self.rng.choices(SENTENCES, k=4)
            yield pb.TranslateRequest(texts=texts, source_language="en", target_language="de", request_id=str(i))

    def cancelled_stream(self, client: TranslationClient, channel: grpc.Channel, outcome: Outcome) -> None:
        stream = channel.stream_stream(
            STREAM_METHOD,
            request_serializer=pb.TranslateRequest.SerializeToString,
            response_deserializer=pb.TranslateStreamResponse.FromString,
        )
        call = stream(self._requests(8), timeout=60)
        next(call)  # one answer, then walk away
        call.cancel()
        raise_code(call)

    def unread_stream(self, client: TranslationClient, channel: grpc.Channel, outcome: Outcome) -> None:
        stream = channel.stream_stream(STREAM_METHOD, request_serializer=pb.TranslateRequest.SerializeToString)
        call = stream(self._requests(64), timeout=60)
        time.sleep(min(2.0, max(0.0, self.stop_at - time.monotonic())))  # never read
        call.cancel()
        raise_code(call)


def raise_code(call: Any) -> None:
    """Raise the finished call's status as an RpcError (OK returns)."""
    try:
        for _ in call:
            pass
    except grpc.RpcError:
        raise


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def plot(samples: list[Sample], restart: Restart, duration: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for server in (0, 1):
        part = [s for s in samples if s.server == server and s.rss_mb > 0]
        label = "server RSS" + (" (after restart)" if server else "")
        ax.plot([s.at for s in part], [s.rss_mb for s in part], label=label, color="C0" if server == 0 else "C1")
        ax.plot(
            [s.at for s in part],
            [s.cache_mb for s in part],
            label="decoder cache" + (" (after restart)" if server else ""),
            linestyle="--",
            color="C0" if server == 0 else "C1",
        )
    if restart.sigterm_at:
        ax.axvline(restart.sigterm_at, color="grey", linestyle=":", label="SIGTERM")
    if restart.ready_at:
        ax.axvline(restart.ready_at, color="grey", linestyle="-.", label="restarted")
    ax.set_xlim(0, max(duration, max((s.at for s in samples), default=0)))
    ax.set_xlabel("seconds")
    ax.set_ylabel("MiB")
    ax.set_title("ferry serve under the soak mix")
    ax.legend(loc="center right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/en-de", help="model directory (default: models/en-de)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load (bounded: at most 600)")
    p.add_argument(
        "--restart-at",
        type=float,
        default=None,
        help="seconds into the run of the SIGTERM (default: a third; >= --duration: no restart)",
    )
    p.add_argument("--drain-timeout", type=float, default=10.0)
    p.add_argument(
        "--retry-timeout",
        type=float,
        default=90.0,
        help="seconds good requests retry UNAVAILABLE (covers the restart: drain + loading the model)",
    )
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    p.add_argument("--plot", type=Path, default=None, help="write the RSS plot (PNG) here")
    p.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help=f"comma-separated kinds of call to mix (default: all of {', '.join(KINDS)})",
    )
    args = p.parse_args(argv)
    unknown = set(args.kinds.split(",")) - set(KINDS)
    if unknown:
        p.error(f"unknown --kinds {sorted(unknown)}; choose from {', '.join(KINDS)}")
    kinds = {k: KINDS[k] for k in args.kinds.split(",")}
    if not 1 <= args.clients <= 256 or not 1 <= args.duration <= 600:
        p.error("--clients must be in [1, 256] and --duration in [1, 600] seconds")

    refs = references(args.model)
    port, metrics_port = free_port(), free_port()
    address = f"127.0.0.1:{port}"
    server = ServerProcess(args.model, port, metrics_port, args.drain_timeout)
    try:
        server.start()
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None
    start = time.monotonic()
    stop_at = start + args.duration
    samples: list[Sample] = []
    restart = Restart()
    phase = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            if server.proc is not None and server.proc.poll() is None:
                samples.append(Sample(time.monotonic() - start, rss_mb(server.pid), cache_mb(metrics_port), phase[0]))

    def restarter() -> None:
        at = args.duration / 3 if args.restart_at is None else args.restart_at
        if at >= args.duration:  # no restart in this run
            return
        time.sleep(max(0.0, start + at - time.monotonic()))
        restart.sigterm_at = time.monotonic() - start
        restart.exit_code = server.stop()
        restart.drain_seconds = time.monotonic() - start - restart.sigterm_at
        phase[0] = 1
        try:
            server.start()
        except RuntimeError as exc:
            print(f"restart failed: {exc}", file=sys.stderr, flush=True)
            return
        restart.ready_at = time.monotonic() - start
        restart.unavailable_seconds = restart.ready_at - restart.sigterm_at

    workers = [Worker(i, address, refs, start, stop_at, args.retry_timeout, kinds) for i in range(args.clients)]
    threads = [threading.Thread(target=w.run, daemon=True) for w in workers]
    helpers = [threading.Thread(target=sample, daemon=True), threading.Thread(target=restarter, daemon=True)]
    for t in helpers + threads:
        t.start()
    for t in threads:
        t.join(args.duration + 180)
    helpers[1].join(300)
    done.set()
    final_exit = server.stop()

    outcomes = [o for w in workers for o in w.outcomes]
    histogram: dict[str, dict[str, int]] = {k: dict(Counter(o.code for o in outcomes if o.kind == k)) for k in KINDS}
    good = [o for o in outcomes if o.kind in GOOD]
    lost = [o for o in good if o.code != "OK"]
    unexpected = [o for o in outcomes if o.code not in EXPECTED[o.kind]]
    latencies = [o.seconds for o in good if o.code == "OK"]
    first = [s.rss_mb for s in samples if s.server == 0 and s.rss_mb]
    second = [s.rss_mb for s in samples if s.server == 1 and s.rss_mb]
    warm = [s.rss_mb for s in samples if s.server == 0 and s.rss_mb and s.at >= min(10.0, restart.sigterm_at / 2)]
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "clients": args.clients,
        "duration_s": args.duration,
        "requests": len(outcomes),
        "good_requests": len(good),
        "good_sentences_checked": sum(o.checked for o in good),
        "lost": len(lost),
        "wrong": sum(o.wrong for o in outcomes),
        "unexpected_codes": len(unexpected),
        "codes": histogram,
        "latency_p50_s": percentile(latencies, 50),
        "latency_p99_s": percentile(latencies, 99),
        "rss_mb": {
            "first_server_start": first[0] if first else 0.0,
            "first_server_after_warmup_min": min(warm) if warm else 0.0,
            "first_server_after_warmup_max": max(warm) if warm else 0.0,
            "first_server_max": max(first) if first else 0.0,
            "second_server_max": max(second) if second else 0.0,
            "second_server_end": second[-1] if second else 0.0,
        },
        "cache_mb_max": max((s.cache_mb for s in samples), default=0.0),
        "restart": asdict(restart),
        "final_exit_code": final_exit,
        "lost_examples": [asdict(o) for o in lost[:10]],
        "unexpected_examples": [asdict(o) for o in unexpected[:10]],
        "wrong_examples": [e for w in workers for e in w.wrong_examples][:10],
        "samples": [asdict(s) for s in samples],
    }
    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.plot:
        plot(samples, restart, args.duration, args.plot)
    return 0 if not lost and not report["wrong"] and not unexpected else 1


def print_report(r: dict[str, Any]) -> None:
    print(f"\n{r['command']}\n{r['machine']}, {r['date']}\n")
    print("| metric | value |\n|---|---|")
    rows = [
        ("clients × seconds", f"{r['clients']} × {r['duration_s']:.0f}"),
        ("requests (good / all)", f"{r['good_requests']} / {r['requests']}"),
        ("good sentences checked", r["good_sentences_checked"]),
        ("lost", r["lost"]),
        ("wrong", r["wrong"]),
        ("unexpected status codes", r["unexpected_codes"]),
        ("latency p50 / p99 (good)", f"{r['latency_p50_s']:.3f} s / {r['latency_p99_s']:.3f} s"),
        (
            "restart: SIGTERM exit code, drain, unavailable",
            f"{r['restart']['exit_code']}, {r['restart']['drain_seconds']:.1f} s, "
            f"{r['restart']['unavailable_seconds']:.1f} s",
        ),
        (
            "server RSS MiB: start / after warm-up min–max / max",
            f"{r['rss_mb']['first_server_start']:.0f} / {r['rss_mb']['first_server_after_warmup_min']:.0f}–"
            f"{r['rss_mb']['first_server_after_warmup_max']:.0f} / {r['rss_mb']['first_server_max']:.0f}",
        ),
        (
            "restarted server RSS MiB: max / end",
            f"{r['rss_mb']['second_server_max']:.0f} / {r['rss_mb']['second_server_end']:.0f}",
        ),
        ("decoder cache MiB max", f"{r['cache_mb_max']:.1f}"),
    ]
    for name, value in rows:
        print(f"| {name} | {value} |")
    print("\n| kind | status codes |\n|---|---|")
    for kind, codes in r["codes"].items():
        print(f"| {kind} | {', '.join(f'{c} {n}' for c, n in sorted(codes.items()))} |")
    for o in r["lost_examples"] + r["unexpected_examples"] + r["wrong_examples"]:
        print("example:", o)


if __name__ == "__main__":
    raise SystemExit(main())
