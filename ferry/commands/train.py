"""``ferry train``: SentencePiece + Transformer on parallel text; resumable."""

from __future__ import annotations

import argparse
import dataclasses


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ferry.model.config import PRESETS  # light: no torch at import time

    p.add_argument("--train-src", required=True, help="training source text (plain or .gz)")
    p.add_argument("--train-tgt", required=True, help="training target text, line-aligned")
    p.add_argument("--valid-src", required=True, help="validation source text")
    p.add_argument("--valid-tgt", required=True, help="validation target text")
    p.add_argument("-s", "--source-language", default="en")
    p.add_argument("-t", "--target-language", default="de")
    p.add_argument("--out", required=True, help="run directory (checkpoints land in OUT/best, OUT/last)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last saved state")
    p.add_argument("--preset", default="small", choices=sorted(PRESETS))
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--max-tokens", type=int, default=4096, help="padded tokens per batch")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=2000)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--clip-norm", type=float, default=1.0)
    p.add_argument("--max-epochs", type=int, default=40)
    p.add_argument("--max-steps", type=int, default=0, help="0 = no limit")
    p.add_argument("--save-every", type=int, default=500, help="steps between resumable saves")
    p.add_argument("--average-last", type=int, default=0, help="average the last K snapshots at the end")
    p.add_argument("--valid-beam-size", type=int, default=1)
    p.add_argument("--valid-limit", type=int, default=0, help="BLEU on the first N validation lines (0 = all)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--weights-dtype", default="float16", choices=["float16", "float32"])
    p.add_argument("--device", default="auto")
    p.add_argument("--init-from", default="", help="warm start from this model directory (weights + spm.model)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")


def run(args: argparse.Namespace) -> int:
    import logging

    from ferry.model.train import TrainConfig, Trainer

    logging.getLogger("ferry.train").setLevel(logging.INFO)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    cfg = TrainConfig(out_dir=args.out, **values)
    progress = Trainer(cfg, resume=args.resume).train()
    print(f"done: step {progress.step}, epoch {progress.epoch}, best valid BLEU {progress.best_bleu:.2f}")
    print(f"checkpoints: {args.out}/best {args.out}/last")
    return 0
