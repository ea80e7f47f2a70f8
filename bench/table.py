"""The issue-16 engine table: ferry vs CTranslate2 (fp32, int8) and transformers, greedy and beam 4,
1 and 2 threads, in one command (``make bench``).

Runs ``bench/compare.py`` once per thread count (each engine in its own process, same sentences and
weights), then prints and writes one table of speed ratios by target tokens per CPU second (stable on
a shared machine) and per wall second.

    python bench/table.py --limit 500 --out bench/results
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare

PAIRS = [
    ("ferry/CT2 fp32", "ferry float32", "CTranslate2 float32"),
    ("ferry/CT2 int8", "ferry int8", "CTranslate2 int8"),
    ("ferry/transformers", "ferry float32", "transformers float32"),
    ("fp32 fast/eager", "ferry float32", "ferry float32 eager"),
    ("int8 fast/eager", "ferry int8", "ferry int8 eager"),
]
CPU_ENGINES = "ferry float32,ferry int8,CTranslate2 float32,CTranslate2 int8,transformers float32"
EAGER_ENGINES = "ferry float32 eager,ferry int8 eager"


def ratio_rows(runs: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for threads, data in sorted(runs.items()):
        by = {(r["engine"], r["beam_size"]): r for r in data["results"] if r["seconds"] > 0}
        same = {(x["ferry"], x["other"], x["beam_size"]): x.get("identical") for x in data.get("ratios", [])}
        for beam in sorted({r["beam_size"] for r in data["results"]}):
            row: dict[str, Any] = {"threads": threads, "search": "greedy" if beam == 1 else f"beam {beam}"}
            for label, ours, theirs in PAIRS:
                a, b = by.get((ours, beam)), by.get((theirs, beam))
                if a and b:
                    row[label] = {
                        "cpu": a["tokens_per_cpu_s"] / b["tokens_per_cpu_s"],
                        "wall": a["tokens_per_s"] / b["tokens_per_s"],
                        "identical": same.get((ours, theirs, beam)),
                    }
            rows.append(row)
    return rows


def _cell(pair: dict[str, Any]) -> str:
    text = f"{pair['cpu']:.2f}× ({pair['wall']:.2f}×)"
    if pair.get("identical") is not None:
        text += f", {100 * pair['identical']:.0f}% same"
    return text


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    labels = [p[0] for p in PAIRS if any(p[0] in r for r in rows)]
    out = [
        f"CPU: {meta['cpu']}; {meta['date']}; command: `{meta['command']}`",
        "",
        "Ratios of target tokens per CPU second (per wall second in brackets); > 1 means ferry is faster; "
        "% same: sentences both engines translated identically.",
        "",
        "| threads | search | " + " | ".join(labels) + " |",
        "|---:|---|" + "---:|" * len(labels),
    ]
    for r in rows:
        cells = [_cell(r[x]) if x in r else "" for x in labels]
        out.append(f"| {r['threads']} | {r['search']} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--limit", type=int, default=500)
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--beam-sizes", default="1,4")
    p.add_argument("--rounds", type=int, default=1, help="runs per engine, best kept (compare.py --rounds)")
    p.add_argument("--eager", action="store_true", help="also run the eager reference path (1 thread)")
    p.add_argument("--out", type=Path, default=compare.REPO / "bench" / "results")
    p.add_argument("--work-dir", type=Path, default=None)
    args = p.parse_args(argv)
    runs: dict[int, dict[str, Any]] = {}
    for i, threads in enumerate(int(t) for t in args.threads.split(",")):
        engines = CPU_ENGINES + ("," + EAGER_ENGINES if args.eager and i == 0 else "")
        out = args.out / f"threads{threads}"
        cmd = ["--limit", str(args.limit), "--threads", str(threads), "--beam-sizes", args.beam_sizes]
        cmd += ["--rounds", str(args.rounds)]
        cmd += ["--engines", engines, "--out", str(out)]
        if args.work_dir:
            cmd += ["--work-dir", str(args.work_dir)]
        compare.main(cmd)
        runs[threads] = json.loads((out / "compare.json").read_text())
    rows = ratio_rows(runs)
    meta = {
        "cpu": compare.cpu_name(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python bench/table.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "versions": compare.versions(),
    }
    text = markdown(rows, meta)
    (args.out / "table.json").write_text(json.dumps({"meta": meta, "rows": rows, "runs": runs}, indent=2) + "\n")
    (args.out / "table.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
