#!/usr/bin/env python3
"""Load benchmark: N concurrent clients for T seconds against a ferry server, compared in the same
run with the in-process ``Translator.translate_batch`` on the same sentences.

    # start a server from a model directory, 32 single-sentence clients for 30 s
    python bench/load.py --model models/en-de --sentences ../shared/data/multi30k/test_2016_flickr.en.gz
    # against a running server (--model still gives the in-process comparison)
    python bench/load.py --server 127.0.0.1:50051 --model models/en-de --clients 32 --duration 30

Prints sentences/s, target tokens/s, p50/p95/p99 latency and errors for both, and their ratio (goal
on CPU: server >= 0.9x in-process with 32 single-sentence clients, 0 errors) and the server's start-up
time (process start to serving); writes JSON.
Each client is a coroutine with its own channel (its own HTTP/2 connection) sending one request at
a time; grpc.aio keeps the benchmark's own CPU use low next to the server.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FALLBACK_SENTENCES = [
    "A man in an orange hat starring at something.",
    "A Boston Terrier is running on lush green grass in front of a white fence.",
    "A girl in karate uniform breaking a stick with a front kick.",
    "Five people wearing winter jackets and helmets stand in the snow, with snowmobiles in the background.",
    "People are fixing the roof of a house.",
    "A man in light colored clothing photographs a group of men wearing dark suits and hats.",
    "A group of people standing in front of an igloo.",
    "A boy in a red uniform is attempting to avoid getting out at home plate.",
    "A guy works on a building.",
    "A man in a vest is sitting in a chair and holding magazines.",
    "A mother and her young song enjoying a beautiful day outside.",
    "Men playing volleyball, with one player missing the ball but hands still in the air.",
    "A woman holding a bowl of food in a kitchen.",
    "A man is leaning off of the side of a blue and white boat as it sits in a body of water.",
    "A woman behind a scrolled wall is writing.",
    "A dog is running in the snow.",
]


@dataclass
class Report:
    mode: str
    seconds: float = 0.0
    requests: int = 0
    sentences: int = 0
    target_tokens: int = 0
    errors: int = 0
    error_codes: dict[str, int] = field(default_factory=dict)
    sentences_per_s: float = 0.0
    tokens_per_s: float = 0.0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_p99_ms: float | None = None

    def finish(self, latencies: list[float]) -> Report:
        self.sentences_per_s = self.sentences / self.seconds if self.seconds else 0.0
        self.tokens_per_s = self.target_tokens / self.seconds if self.seconds else 0.0
        if latencies:
            ordered = sorted(latencies)
            pick = lambda q: round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)  # noqa: E731
            self.latency_p50_ms, self.latency_p95_ms, self.latency_p99_ms = pick(0.50), pick(0.95), pick(0.99)
        return self

    def line(self) -> str:
        lat = (
            f"p50 {self.latency_p50_ms} ms  p95 {self.latency_p95_ms} ms  p99 {self.latency_p99_ms} ms"
            if self.latency_p50_ms is not None
            else "latency n/a"
        )
        return (
            f"{self.mode:>10}: {self.sentences_per_s:8.1f} sentences/s  {self.tokens_per_s:9.1f} target tokens/s  "
            f"{lat}  errors {self.errors} ({self.sentences} sentences in {self.seconds:.1f}s)"
        )


def read_sentences(path: str | None, limit: int) -> list[str]:
    if path and Path(path).is_file():
        opener: Any = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip()]
        source = f"{len(lines)} sentences from {path}"
    else:
        if path:
            print(f"warning: {path} not found; using the built-in sentences", file=sys.stderr)
        lines, source = list(FALLBACK_SENTENCES), "built-in sentences"
    print(f"using {source}" + (f" (first {limit})" if limit and len(lines) > limit else ""), file=sys.stderr)
    return lines[:limit] if limit else lines


# ---------------------------------------------------------------------------------------------- server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen[str], str, float]:
    """Start ``ferry serve``; returns the process, its address and the seconds until it said it serves."""
    start = time.monotonic()
    port = free_port()
    cmd = [sys.executable, "-m", "ferry", "serve", "--model", args.model, "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--metrics-port", "0", "--http-port", "0", "--device", args.device, *args.serve_arg]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    ready = threading.Event()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith("ferry serving"):
                ready.set()
            elif args.verbose or "error" in line.lower():
                print(f"[server] {line.rstrip()}", file=sys.stderr)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + 300
    while not ready.wait(0.5):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"ferry serve did not start (exit {proc.poll()}); run with --verbose")
    return proc, f"127.0.0.1:{port}", time.monotonic() - start


def stop_server(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


# ---------------------------------------------------------------------------------------------- load
async def run_load(args: argparse.Namespace, target: str, sentences: list[str]) -> Report:
    import grpc
    from ferry.proto.v1 import translation_pb2 as pb
    from ferry.proto.v1 import translation_pb2_grpc as pb_grpc

    metadata = (("authorization", f"Bearer {args.token}"),) if args.token else None
    report = Report(mode="server")
    latencies: list[float] = []

    async def client(k: int) -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.TranslationServiceStub(channel)
            i = k * args.batch_size
            while time.monotonic() < stop_at:
                texts = [sentences[(i + j) % len(sentences)] for j in range(args.batch_size)]
                i += args.clients * args.batch_size
                request = pb.TranslateRequest(
                    texts=texts, source_language=args.source_language, target_language=args.target_language
                )
                request.options.beam_size = args.beam_size
                t0 = time.monotonic()
                try:
                    response = await stub.Translate(request, timeout=args.timeout, metadata=metadata)
                except grpc.aio.AioRpcError as err:
                    if start <= time.monotonic() <= stop_at:
                        report.errors += 1
                        name = err.code().name
                        report.error_codes[name] = report.error_codes.get(name, 0) + 1
                    await asyncio.sleep(0.05)
                    continue
                done = time.monotonic()
                if start <= done <= stop_at:  # completions inside the measured window
                    latencies.append(done - t0)
                    report.requests += 1
                    report.sentences += len(texts)
                    report.target_tokens += sum(t.output_tokens for t in response.translations)

    start = time.monotonic() + args.warmup
    stop_at = start + args.duration
    tasks = [asyncio.create_task(client(k)) for k in range(args.clients)]
    await asyncio.sleep(stop_at - time.monotonic())
    for task in tasks:  # calls still running at the end are not counted
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    report.seconds = args.duration
    return report.finish(latencies)


def run_in_process(args: argparse.Namespace, sentences: list[str]) -> Report:
    import torch
    from ferry.model.translator import load_translator

    if args.threads:
        torch.set_num_threads(args.threads)
    translator = load_translator(args.model, device=args.device)
    report = Report(mode="in-process")
    size = args.baseline_batch
    translator.translate_batch(sentences[:size], beam_size=args.beam_size, max_batch_size=size)  # warm-up
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < args.duration:
        chunk = [sentences[(i + j) % len(sentences)] for j in range(size)]
        i += size
        results = translator.translate_batch(chunk, beam_size=args.beam_size, max_batch_size=size)
        report.requests += 1
        report.sentences += len(chunk)
        report.target_tokens += sum(r.output_tokens for r in results)
    report.seconds = time.monotonic() - start
    return report.finish([])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", metavar="HOST:PORT", help="a running server (default: start one from --model)")
    p.add_argument("--model", help="model directory: the in-process comparison, and the server when none is given")
    p.add_argument("--sentences", default="../shared/data/multi30k/test_2016_flickr.en.gz", help="text or .gz file")
    p.add_argument("--limit", type=int, default=0, help="use at most this many sentences (0 = all)")
    p.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    p.add_argument("--batch-size", type=int, default=1, help="sentences per request (default 1)")
    p.add_argument("--duration", type=float, default=30.0, help="measured seconds per mode (default 30)")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before the server run")
    p.add_argument("--beam-size", type=int, default=4)
    p.add_argument("-s", "--source-language", default="en")
    p.add_argument("-t", "--target-language", default="de")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads for the in-process run and a server started here (OMP_NUM_THREADS); 0 = torch's "
        "default. On a machine busy with other work, 1 avoids OpenMP spin-waiting",
    )
    p.add_argument("--baseline-batch", type=int, default=64, help="in-process translate_batch size (default 64)")
    p.add_argument("--no-compare", action="store_true", help="skip the in-process run")
    p.add_argument("--timeout", type=float, default=120.0, help="per-request deadline (s)")
    p.add_argument("--token", default=os.environ.get("FERRY_TOKEN"), help="bearer token (or FERRY_TOKEN)")
    p.add_argument("--serve-arg", action="append", default=[], help="extra `ferry serve` argument (repeatable)")
    p.add_argument("--json", default="bench/results/load.json", help="where to write the JSON report")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if not args.server and not args.model:
        p.error("give --server HOST:PORT or --model DIR (or both)")
    sentences = read_sentences(args.sentences, args.limit)

    proc = None
    startup: float | None = None
    try:
        if args.server:
            target = args.server
        else:
            proc, target, startup = start_server(args)
            print(f"server start-up (process start to serving): {startup:.1f} s")
        baseline = None if args.no_compare or not args.model else run_in_process(args, sentences)
        if baseline:
            print(baseline.line())
        server = asyncio.run(run_load(args, target, sentences))
        print(server.line())
    finally:
        if proc is not None:
            stop_server(proc)

    ratio = server.sentences_per_s / baseline.sentences_per_s if baseline and baseline.sentences_per_s else None
    if ratio is not None:
        verdict = "meets" if ratio >= 0.9 and server.errors == 0 else "misses"
        print(f"server / in-process throughput: {ratio:.2f}x ({verdict} the 0.9x, 0-error goal of issue 16)")
    out = {
        "config": {k: v for k, v in vars(args).items() if k != "token"},
        "sentences_available": len(sentences),
        "host": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "server": asdict(server),
        "in_process": asdict(baseline) if baseline else None,
        "throughput_ratio": ratio,
        "startup_seconds": startup,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}", file=sys.stderr)
    return 0 if server.errors == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
