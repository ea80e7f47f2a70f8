"""``ferry train``: SentencePiece + Transformer on parallel text; resumable."""

from __future__ import annotations

import argparse
import dataclasses


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ferry.model.config import PRESETS  # light: no torch at import time
    from ferry.model.train_config import TrainConfig as C

    p.add_argument("--train-src", required=True, help="training source text (plain or .gz)")
    p.add_argument("--train-tgt", required=True, help="training target text, line-aligned")
    p.add_argument("--valid-src", required=True, help="validation source text")
    p.add_argument("--valid-tgt", required=True, help="validation target text")
    p.add_argument("-s", "--source-language", default=C.source_language, help="default %(default)s")
    p.add_argument("-t", "--target-language", default=C.target_language, help="default %(default)s")
    p.add_argument("--out", required=True, help="run directory (checkpoints land in OUT/best, OUT/last)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last saved state")
    p.add_argument("--preset", default=C.preset, choices=sorted(PRESETS), help="default %(default)s")
    p.add_argument("--vocab-size", type=int, default=C.vocab_size, help="default %(default)s")
    p.add_argument("--max-tokens", type=int, default=C.max_tokens, help="padded tokens per batch (default %(default)s)")
    p.add_argument("--lr", type=float, default=C.lr, help="default %(default)s")
    p.add_argument("--warmup-steps", type=int, default=C.warmup_steps, help="default %(default)s")
    p.add_argument("--label-smoothing", type=float, default=C.label_smoothing, help="default %(default)s")
    p.add_argument("--clip-norm", type=float, default=C.clip_norm, help="default %(default)s")
    p.add_argument("--max-epochs", type=int, default=C.max_epochs, help="default %(default)s")
    p.add_argument("--max-steps", type=int, default=C.max_steps, help="0 = no limit (default %(default)s)")
    p.add_argument("--save-every", type=int, default=C.save_every, help="steps between resumable saves")
    p.add_argument("--average-last", type=int, default=C.average_last, help="average the last K snapshots at the end")
    p.add_argument("--valid-beam-size", type=int, default=C.valid_beam_size, help="default %(default)s")
    p.add_argument(
        "--valid-limit", type=int, default=C.valid_limit, help="BLEU on the first N validation lines (0 = all)"
    )
    p.add_argument("--seed", type=int, default=C.seed, help="default %(default)s")
    p.add_argument("--weights-dtype", default=C.weights_dtype, choices=["float16", "float32"])
    p.add_argument("--device", default=C.device, help="default %(default)s")
    p.add_argument(
        "--init-from", default=C.init_from, help="warm start from this model directory (weights + spm.model)"
    )
    p.add_argument("--threads", type=int, default=C.threads, help="torch CPU threads (0 = default)")


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
