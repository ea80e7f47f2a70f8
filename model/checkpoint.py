"""Checkpoint directories: ``config.json`` + ``model.safetensors`` + SentencePiece model(s). No pickle."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .config import TransformerConfig
from .tokenizer import Tokenizer
from .transformer import Transformer

FORMAT = "ferry"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
VOCAB_FILE = "vocab.json"


@dataclass
class CheckpointInfo:
    """Everything in ``config.json`` besides the architecture."""

    source_language: str = ""
    target_language: str = ""
    model_id: str = ""
    version: str = ""
    source_spm: str = "spm.model"
    target_spm: str = "spm.model"
    extra: dict[str, Any] = field(default_factory=dict)


def is_ferry_checkpoint(path: str | Path) -> bool:
    cfg = Path(path) / CONFIG_FILE
    if not cfg.is_file():
        return False
    try:
        meta = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return True  # broken: let load_checkpoint name the file and the problem
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def _aliases(cfg: TransformerConfig) -> set[str]:
    """Parameter names that are views of another (tied) parameter and are not stored."""
    names = set()
    if cfg.share_embeddings:
        names.add("tgt_embed.weight")
    if cfg.tie_output:
        names.add("output.weight")
    return names


def save_checkpoint(
    path: str | Path,
    model: Transformer,
    info: CheckpointInfo,
    *,
    source_spm: str | Path,
    target_spm: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    vocab: dict[str, int] | None = None,
) -> Path:
    """Write a checkpoint directory (weights cast to ``dtype``; float16 halves the size). ``vocab``
    (piece -> id, e.g. from an imported Marian model) is saved as vocab.json when ids are not the
    SentencePiece ids."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    skip = _aliases(model.cfg)
    tensors = {
        name: t.detach().to("cpu", dtype if t.is_floating_point() else t.dtype).contiguous()
        for name, t in model.state_dict().items()
        if name not in skip
    }
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": FORMAT})
    src_name = "source.spm" if target_spm is not None and Path(target_spm) != Path(source_spm) else "spm.model"
    tgt_name = "target.spm" if src_name == "source.spm" else src_name
    if Path(source_spm).resolve() != (out / src_name).resolve():
        shutil.copyfile(source_spm, out / src_name)
    if tgt_name != src_name and target_spm is not None and Path(target_spm).resolve() != (out / tgt_name).resolve():
        shutil.copyfile(target_spm, out / tgt_name)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model.cfg.to_dict(),
        "source_language": info.source_language,
        "target_language": info.target_language,
        "model_id": info.model_id,
        "version": info.version,
        "tokenizer": {"source": src_name, "target": tgt_name, **({"vocab": VOCAB_FILE} if vocab else {})},
        "weights_dtype": str(dtype).removeprefix("torch."),
        **({"extra": info.extra} if info.extra else {}),
    }
    if vocab:
        (out / VOCAB_FILE).write_text(json.dumps(vocab, ensure_ascii=False, indent=0) + "\n")
    (out / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def load_checkpoint(
    path: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[Transformer, Tokenizer, CheckpointInfo]:
    """Load a ferry checkpoint directory onto ``device`` in ``dtype``.

    A broken directory (unreadable or invalid config.json, bad config values, a missing, corrupt or
    truncated weights file, a missing or corrupt tokenizer) raises ``ValueError`` or
    ``FileNotFoundError`` with a one-line ``<file>: <problem>`` message."""
    root = Path(path)
    meta = _read_meta(root)
    cfg_file = root / CONFIG_FILE
    if meta.get("format") != FORMAT:
        raise ValueError(f"{cfg_file}: not a ferry checkpoint (format={meta.get('format')!r})")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{cfg_file}: checkpoint format {meta['format_version']} is newer; upgrade ferry to read it")
    if not isinstance(meta.get("model"), dict):
        raise ValueError(f"{cfg_file}: has no 'model' object with the architecture")
    try:
        cfg = TransformerConfig.from_dict(meta["model"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{cfg_file}: {exc}") from None
    model = Transformer(cfg)
    state = _read_weights(root / WEIGHTS_FILE)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        first = str(exc).strip().splitlines()[-1].strip()
        raise ValueError(f"{root / WEIGHTS_FILE}: tensor shapes do not match {CONFIG_FILE}: {first}") from None
    missing = [m for m in missing if m not in _aliases(cfg)]
    if missing or unexpected:
        raise ValueError(
            f"{root / WEIGHTS_FILE}: tensors do not match {CONFIG_FILE}: missing={missing} unexpected={unexpected}"
        )
    model.to(device=device, dtype=dtype).eval()
    tok = meta.get("tokenizer", {})
    info = CheckpointInfo(
        source_language=meta.get("source_language", ""),
        target_language=meta.get("target_language", ""),
        model_id=meta.get("model_id", "") or root.name,
        version=meta.get("version", ""),
        source_spm=tok.get("source", "spm.model"),
        target_spm=tok.get("target", "spm.model"),
        extra=meta.get("extra", {}),
    )
    for name in {info.source_spm, info.target_spm} | ({tok["vocab"]} if tok.get("vocab") else set()):
        if not (root / name).is_file():
            raise FileNotFoundError(f"{root / name}: tokenizer file missing (named in {CONFIG_FILE})")
    try:
        vocab = json.loads((root / tok["vocab"]).read_text()) if tok.get("vocab") else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{root / tok['vocab']}: not a readable JSON vocabulary ({exc})") from None
    try:
        tokenizer = Tokenizer(
            root / info.source_spm, root / info.target_spm, vocab=vocab, eos_id=cfg.eos_id, unk_id=cfg.unk_id
        )
    except (OSError, RuntimeError) as exc:
        where = root / info.source_spm if info.source_spm == info.target_spm else root
        raise ValueError(f"{where}: not a valid SentencePiece model ({str(exc).strip()[:200]})") from None
    return model, tokenizer, info


def _read_meta(root: Path) -> dict[str, Any]:
    cfg_file = root / CONFIG_FILE
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file}: missing; {root} is not a model directory")
    try:
        meta = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{cfg_file}: not readable JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{cfg_file}: expected a JSON object, found {type(meta).__name__}")
    return meta


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file missing")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors' own error type for a corrupt or truncated file
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"{path}: corrupt or truncated safetensors file ({detail}); copy or export the model again"
        ) from None
