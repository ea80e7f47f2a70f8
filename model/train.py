"""Training: SentencePiece vocabulary, then the Transformer, resumable at any saved step.

A run directory holds ``spm.model``, ``train_config.json``, ``state/`` (the latest resumable state:
weights, Adam moments and RNG in safetensors, counters in JSON; no pickle), ``snapshots/`` (weights
of the last saves, for averaging), ``best/`` and ``last/`` (ferry checkpoints for ``Translator``)
and ``log.jsonl`` (one line per validation).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .checkpoint import CheckpointInfo, load_checkpoint, save_checkpoint
from .config import PRESETS, TransformerConfig
from .data import Batch, iterate_batches, make_batch, read_parallel, token_batches
from .evaluate import score
from .tokenizer import Tokenizer, train_sentencepiece
from .train_config import TrainConfig
from .transformer import Transformer
from .translator import Translator

log = logging.getLogger("ferry.train")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up then inverse square-root decay (Vaswani et al.), peaking at ``cfg.lr``."""
    step = max(step, 1)
    return cfg.lr * min(step / cfg.warmup_steps, math.sqrt(cfg.warmup_steps / step))


def loss_fn(model: Transformer, batch: Batch, label_smoothing: float) -> torch.Tensor:
    """Summed label-smoothed cross-entropy over real target tokens."""
    logits = model(batch.src, batch.src_lengths, batch.tgt_in)  # (B, T, V)
    return F.cross_entropy(
        logits.float().flatten(0, 1),
        batch.tgt_out.flatten(),
        ignore_index=model.cfg.pad_id,
        label_smoothing=label_smoothing,
        reduction="sum",
    )


@dataclass
class Progress:
    """Counters that say where a run is (saved with each state)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_bleu: float = -1.0
    trained_seconds: float = 0.0


class Trainer:
    def __init__(self, cfg: TrainConfig, *, resume: bool = False) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out_dir)
        if self.out.exists() and (self.out / "state").exists() and not resume:
            raise ValueError(f"{self.out} already holds a run; pass --resume to continue it or pick another --out")
        self.out.mkdir(parents=True, exist_ok=True)
        if resume and (self.out / "train_config.json").exists():
            saved = TrainConfig.load(self.out / "train_config.json")
            # Budget and bookkeeping fields may change on resume; the rest must not.
            mutable = {"max_epochs", "max_steps", "save_every", "average_last", "valid_limit", "device", "threads"}
            changed = [
                f.name
                for f in dataclasses.fields(cfg)
                if f.name not in mutable and getattr(cfg, f.name) != getattr(saved, f.name)
            ]
            if changed:
                raise ValueError(f"--resume with changed settings {changed}; keep them as in {self.out}")
        cfg.save(self.out / "train_config.json")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = torch.device(
            "cuda"
            if cfg.device == "auto" and torch.cuda.is_available()
            else ("cpu" if cfg.device == "auto" else cfg.device)
        )

        src, tgt = read_parallel(cfg.train_src, cfg.train_tgt)
        spm_path = self.out / "spm.model"
        if cfg.init_from and not spm_path.exists():
            shutil.copyfile(Path(cfg.init_from) / "spm.model", spm_path)
        if not spm_path.exists():
            log.info("training SentencePiece (vocab %d) on %d pairs", cfg.vocab_size, len(src))
            train_sentencepiece([*src, *tgt], self.out / "spm", vocab_size=cfg.vocab_size)
        self.spm_path = spm_path
        self.tokenizer = Tokenizer(spm_path)
        src_ids = self.tokenizer.encode_source(src)
        tgt_ids = self.tokenizer.encode_target(tgt)
        keep = [
            i
            for i in range(len(src))
            if src[i].strip()
            and tgt[i].strip()
            and len(src_ids[i]) <= cfg.max_length
            and len(tgt_ids[i]) < cfg.max_length
        ]
        self.src_ids = [src_ids[i] for i in keep]
        self.tgt_ids = [tgt_ids[i] for i in keep]
        self.valid_src, self.valid_tgt = read_parallel(cfg.valid_src, cfg.valid_tgt)

        torch.manual_seed(cfg.seed)
        vocab = self.tokenizer.source_vocab_size
        if cfg.init_from:
            init_model, _, _ = load_checkpoint(cfg.init_from, device="cpu", dtype=torch.float32)
            self.model_cfg: TransformerConfig = init_model.cfg
            self.model = init_model.train().to(self.device)
        else:
            self.model_cfg = PRESETS[cfg.preset](vocab)
            self.model = Transformer(self.model_cfg).to(self.device)
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-9, weight_decay=cfg.weight_decay
        )
        self.progress = Progress()
        if resume and (self.out / "state").exists():
            self._load_state()
        log.info(
            "model %s: %.1fM parameters, %d training pairs, device %s",
            cfg.preset,
            self.model.num_parameters() / 1e6,
            len(self.src_ids),
            self.device,
        )

    # ------------------------------------------------------------------ state
    def _named_params(self) -> dict[str, torch.nn.Parameter]:
        return dict(self.model.named_parameters())

    def _save_state(self) -> None:
        """Write the resumable state atomically (to ``state.tmp`` then rename)."""
        tmp = self.out / "state.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        tensors: dict[str, torch.Tensor] = {}
        for name, p in self._named_params().items():
            tensors[f"model.{name}"] = p.detach().cpu().contiguous()
            st = self.opt.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in st:
                    tensors[f"adam.{key}.{name}"] = st[key].detach().cpu().contiguous()
        tensors["rng.cpu"] = torch.get_rng_state()
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        save_file(tensors, str(tmp / "state.safetensors"))
        adam_step = next((float(s["step"]) for s in self.opt.state.values() if "step" in s), 0.0)
        meta = {**dataclasses.asdict(self.progress), "adam_step": adam_step}
        (tmp / "progress.json").write_text(json.dumps(meta, indent=2) + "\n")
        final = self.out / "state"
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        # Snapshot of the weights alone, for averaging.
        snaps = self.out / "snapshots"
        snaps.mkdir(exist_ok=True)
        weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        save_file(weights, str(snaps / f"step{self.progress.step:08d}.safetensors"))
        for old in sorted(snaps.glob("step*.safetensors"))[: -self.cfg.keep_snapshots]:
            old.unlink()

    def _load_state(self) -> None:
        state_dir = self.out / "state"
        tensors = load_file(str(state_dir / "state.safetensors"))
        meta = json.loads((state_dir / "progress.json").read_text())
        adam_step = meta.pop("adam_step", 0.0)
        self.progress = Progress(**meta)
        params = self._named_params()
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(tensors[f"model.{name}"])
                if f"adam.exp_avg.{name}" in tensors:
                    self.opt.state[p] = {
                        "step": torch.tensor(adam_step),
                        "exp_avg": tensors[f"adam.exp_avg.{name}"].to(self.device),
                        "exp_avg_sq": tensors[f"adam.exp_avg_sq.{name}"].to(self.device),
                    }
        torch.set_rng_state(tensors["rng.cpu"])
        if "rng.cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        log.info(
            "resumed %s at step %d (epoch %d, batch %d)",
            self.out,
            self.progress.step,
            self.progress.epoch,
            self.progress.batch_in_epoch,
        )

    def _export(self, name: str, model: Transformer | None = None) -> Path:
        info = CheckpointInfo(
            source_language=self.cfg.source_language,
            target_language=self.cfg.target_language,
            model_id=f"{self.cfg.source_language}-{self.cfg.target_language}",
            version=f"step{self.progress.step}",
            extra={"trained_steps": self.progress.step, "trained_epochs": self.progress.epoch},
        )
        dtype = {"float16": torch.float16, "float32": torch.float32}[self.cfg.weights_dtype]
        return save_checkpoint(self.out / name, model or self.model, info, source_spm=self.spm_path, dtype=dtype)

    # ------------------------------------------------------------------ loop
    def _batches(self, epoch: int) -> list[list[int]]:
        return token_batches(
            [len(r) for r in self.src_ids],
            [len(r) for r in self.tgt_ids],
            max_tokens=self.cfg.max_tokens,
            seed=self.cfg.seed,
            epoch=epoch,
        )

    def _done(self) -> bool:
        p, c = self.progress, self.cfg
        return p.epoch >= c.max_epochs or (c.max_steps > 0 and p.step >= c.max_steps)

    def train(self) -> Progress:
        from tqdm import tqdm

        cfg, p = self.cfg, self.progress
        autocast = self.device.type == "cuda"
        while not self._done():
            batches = self._batches(p.epoch)
            bar = tqdm(
                total=len(batches),
                initial=p.batch_in_epoch,
                desc=f"epoch {p.epoch + 1}",
                unit="batch",
                dynamic_ncols=True,
                mininterval=2.0,
            )
            tokens_seen, t0 = 0, time.perf_counter()
            self.model.train()
            for batch in iterate_batches(
                self.src_ids,
                self.tgt_ids,
                batches,
                start=p.batch_in_epoch,
                pad_id=self.model_cfg.pad_id,
                start_id=self.model_cfg.decoder_start_id,
                eos_id=self.model_cfg.eos_id,
            ):
                batch = batch.to(self.device)
                for group in self.opt.param_groups:
                    group["lr"] = lr_at(p.step + 1, cfg)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
                    loss = loss_fn(self.model, batch, cfg.label_smoothing)
                self.opt.zero_grad(set_to_none=True)
                (loss / batch.num_tokens).backward()
                if cfg.clip_norm > 0:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_norm)
                self.opt.step()
                p.step += 1
                p.batch_in_epoch += 1
                tokens_seen += batch.num_tokens
                elapsed = time.perf_counter() - t0
                bar.set_postfix(
                    loss=f"{loss.item() / batch.num_tokens:.3f}",
                    tok_s=f"{tokens_seen / elapsed:.0f}",
                    step=p.step,
                    refresh=False,
                )
                bar.update(1)
                if p.step % cfg.save_every == 0:
                    p.trained_seconds += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    tokens_seen = 0
                    self._save_state()
                if cfg.max_steps > 0 and p.step >= cfg.max_steps:
                    break
            bar.close()
            p.trained_seconds += time.perf_counter() - t0
            if p.batch_in_epoch >= len(batches):
                p.epoch += 1
                p.batch_in_epoch = 0
                self._end_of_epoch()
            self._save_state()
        self._export("last")
        if cfg.average_last > 1:
            self.average(cfg.average_last)
        return p

    @torch.no_grad()
    def validation_loss(self) -> float:
        self.model.eval()
        src_ids = self.tokenizer.encode_source(self.valid_src)
        tgt_ids = self.tokenizer.encode_target(self.valid_tgt)
        total, count = 0.0, 0
        for start in range(0, len(src_ids), 64):
            batch = make_batch(
                src_ids[start : start + 64],
                tgt_ids[start : start + 64],
                pad_id=self.model_cfg.pad_id,
                start_id=self.model_cfg.decoder_start_id,
                eos_id=self.model_cfg.eos_id,
            ).to(self.device)
            total += float(loss_fn(self.model, batch, 0.0))
            count += batch.num_tokens
        return total / max(count, 1)

    def validation_bleu(self, model: Transformer | None = None) -> float:
        n = self.cfg.valid_limit or len(self.valid_src)
        translator = Translator.from_parts(model or self.model, self.tokenizer)
        hyps = [r.text for r in translator.translate_batch(self.valid_src[:n], beam_size=self.cfg.valid_beam_size)]
        return score(hyps, self.valid_tgt[:n]).bleu

    def _end_of_epoch(self) -> None:
        p = self.progress
        vloss = self.validation_loss()
        bleu = self.validation_bleu()
        record: dict[str, Any] = {
            "epoch": p.epoch,
            "step": p.step,
            "valid_loss": round(vloss, 4),
            "valid_bleu": round(bleu, 2),
            "trained_seconds": round(p.trained_seconds),
        }
        if bleu > p.best_bleu:
            p.best_bleu = bleu
            self._export("best")
            record["best"] = True
        with (self.out / "log.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")
        log.warning(
            "epoch %d step %d: valid loss %.3f, BLEU %.2f (best %.2f)", p.epoch, p.step, vloss, bleu, p.best_bleu
        )
        self.model.train()

    def average(self, k: int) -> Path:
        """Average the last ``k`` weight snapshots into the ``averaged/`` checkpoint."""
        snaps = sorted((self.out / "snapshots").glob("step*.safetensors"))[-k:]
        if not snaps:
            raise ValueError(f"no snapshots in {self.out / 'snapshots'} to average")
        total: dict[str, torch.Tensor] = {}
        for s in snaps:
            for name, t in load_file(str(s)).items():
                total[name] = total.get(name, torch.zeros_like(t, dtype=torch.float64)) + t.double()
        avg = Transformer(self.model_cfg)
        avg.load_state_dict({n: (t / len(snaps)).float() for n, t in total.items()}, strict=False)
        avg.to(self.device).eval()
        bleu = self.validation_bleu(avg)
        log.warning("average of %d snapshots: valid BLEU %.2f", len(snaps), bleu)
        with (self.out / "log.jsonl").open("a") as f:
            f.write(
                json.dumps({"averaged": len(snaps), "step": self.progress.step, "valid_bleu": round(bleu, 2)}) + "\n"
            )
        return self._export("averaged", avg)
