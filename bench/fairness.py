#!/usr/bin/env python3
"""Head-of-line blocking probe: while requests of many long texts run in one engine, how long does a
one-sentence request take?

    nice -n -15 python bench/fairness.py --model models/en-de --big-requests 2 --texts 96 --probes 5

Starts an in-process ``Engine`` (no gRPC), submits ``--big-requests`` requests of ``--texts`` long
sentences each, then every ``--gap`` seconds one single-sentence probe, waiting for each. Prints each
probe's latency, the probe's time alone (same engine, idle) and how long the big requests took; writes
JSON. Goal (issue 13): probe <= 2 s on the 2-core development machine.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import statistics
import time
from pathlib import Path


def read_sentences(path: str) -> list[str]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/en-de")
    p.add_argument("--sentences", default="../shared/data/multi30k/test_2016_flickr.en.gz")
    p.add_argument("--big-requests", type=int, default=2)
    p.add_argument("--texts", type=int, default=96, help="texts per big request (the longest sentences)")
    p.add_argument("--probes", type=int, default=5)
    p.add_argument("--gap", type=float, default=0.5, help="seconds between probes")
    p.add_argument("--beam-size", type=int, default=4)
    p.add_argument("--json", default="bench/results/fairness.json")
    args = p.parse_args()

    from ferry.model.options import DecodeOptions
    from ferry.model.translator import load_translator
    from ferry.server.engine import Engine

    options = DecodeOptions(beam_size=args.beam_size)
    sentences = sorted(read_sentences(args.sentences), key=len, reverse=True)
    probe = "A dog runs."
    engine = Engine(load_translator(args.model, device="cpu"))
    with engine:
        t0 = time.monotonic()
        engine.submit([probe], options).result()
        alone = time.monotonic() - t0
        start = time.monotonic()
        big = [
            engine.submit(sentences[k * args.texts : (k + 1) * args.texts], options) for k in range(args.big_requests)
        ]
        latencies = []
        for _ in range(args.probes):
            time.sleep(args.gap)
            t0 = time.monotonic()
            engine.submit([probe], options).result()
            latencies.append(time.monotonic() - t0)
            print(f"probe {len(latencies)}: {latencies[-1]:.2f} s", flush=True)
        for h in big:
            h.result()
        big_seconds = time.monotonic() - start
    report = {
        "command": "bench/fairness.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "machine": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "probe_alone_s": round(alone, 3),
        "probe_s": [round(x, 3) for x in latencies],
        "probe_median_s": round(statistics.median(latencies), 3),
        "probe_max_s": round(max(latencies), 3),
        "big_requests_s": round(big_seconds, 2),
        "big_sentences": args.big_requests * args.texts,
    }
    print(f"{'probe alone':>16} {alone:8.2f} s")
    print(f"{'probe median':>16} {report['probe_median_s']:8.2f} s   max {report['probe_max_s']:.2f} s")
    print(f"{'big requests':>16} {big_seconds:8.2f} s   ({report['big_sentences']} sentences)")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
