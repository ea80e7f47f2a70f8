"""GEMM call styles on a decode step's weights: which way of calling the fp32 GEMM is fastest here.

Runs every Linear a decode step runs (the model's real decoder weights, then the output projection),
in model order so that each weight comes out of cache as in real decoding, for a few row counts, with
each call style in turn, and prints CPU milliseconds per step-worth of GEMMs:

- ``F.linear``: torch's default (MKL sgemm with the weight transposed on the fly);
- ``addmm(W^T)``: the weight stored transposed once, ``(K, N)`` contiguous (ferry's ``mkl`` backend);
- ``onednn``: the weight reordered once for oneDNN (ferry's ``onednn`` backend);
- ``native``: model/gemm.c, the weight packed once into 16-column panels (ferry's default on CPU).

    python bench/gemm.py --model models/en-de --threads 1 --out /tmp/gemm
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor


def decoder_weights(model_dir: str) -> list[tuple[Tensor, Tensor | None]]:
    """(weight, bias) of each GEMM one decode step runs, in order (Q/K/V fused as ferry runs them)."""
    from ferry.model.fastpath import fuse_projections
    from ferry.model.loading import load_model

    model = load_model(model_dir).model.eval().requires_grad_(False)
    fuse_projections(model)
    linears = []
    for layer in model.decoder_layers:
        sa, ca, ffn = layer.self_attn, layer.cross_attn, layer.ffn
        linears += [sa.qkv_proj, sa.out_proj, ca.q_proj, ca.out_proj, ffn.fc1, ffn.fc2]
    linears.append(model.output)
    return [(lin.weight.detach(), lin.bias) for lin in linears]


def styles(weights: list[tuple[Tensor, Tensor | None]]) -> dict[str, Callable[[dict[int, Tensor]], None]]:
    transposed = [(w.t().contiguous(), b) for w, b in weights]
    packed = [(torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), None), b, w.shape[1]) for w, b in weights]

    def linear(xs: dict[int, Tensor]) -> None:
        for w, b in weights:
            F.linear(xs[w.shape[1]], w, b)

    def addmm_t(xs: dict[int, Tensor]) -> None:
        for wt, b in transposed:
            torch.addmm(b, xs[wt.shape[0]], wt) if b is not None else torch.mm(xs[wt.shape[0]], wt)

    def onednn(xs: dict[int, Tensor]) -> None:
        for p, b, k in packed:
            torch.ops.mkldnn._linear_pointwise(xs[k], p, b, "none", [], "")

    out: dict[str, Callable[[dict[int, Tensor]], None]] = {"F.linear": linear, "addmm(W^T)": addmm_t}
    if torch.backends.mkldnn.is_available():
        out["onednn"] = onednn
    from ferry.model import native

    if native.library() is not None:
        gemms = [native.linear(w, b) for w, b in weights]

        def own(xs: dict[int, Tensor]) -> None:
            for lin in gemms:
                assert lin is not None
                lin(xs[lin.in_features])

        out["native"] = own
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/en-de")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", default="1,8,20,32,64,128", help="comma-separated row counts")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path("bench/results/gemm"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    weights = decoder_weights(args.model)
    calls = styles(weights)
    results = []
    with torch.inference_mode():
        for rows in (int(r) for r in args.rows.split(",")):
            xs = {k: torch.randn(rows, k) for k in {int(w.shape[1]) for w, _ in weights}}
            best: dict[str, float] = {}
            for _ in range(args.reps):
                for name, fn in calls.items():  # styles alternate: drift on a shared machine hits all
                    fn(xs)
                    start = time.process_time()
                    for _ in range(5):
                        fn(xs)
                    best[name] = min(best.get(name, float("inf")), (time.process_time() - start) / 5 * 1e3)
            results.append({"rows": rows, "ms": best})
    names = list(calls)
    print(f"{'rows':>5} " + " ".join(f"{n:>12}" for n in names) + "  (CPU ms per step's GEMMs)")
    for r in results:
        print(f"{r['rows']:>5} " + " ".join(f"{r['ms'][n]:>12.3f}" for n in names))
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python bench/gemm.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items() if k != "out"),
        "cpu": platform.processor() or platform.machine(),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "gemms_per_step": len(weights),
    }
    (args.out / "gemm.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"wrote {args.out / 'gemm.json'}")


if __name__ == "__main__":
    main()
