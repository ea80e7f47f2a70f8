"""Open any supported model directory (format detected from its files): the one loading path behind
``Translator(path)``, every ``--model`` option and ``ferry convert``. Imports nothing from
translator.py (the Translator imports this module, not the other way round)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from torch import nn

from .checkpoint import CheckpointInfo, is_ferry_checkpoint, load_checkpoint, save_checkpoint
from .marian import SOURCE_SPM, TARGET_SPM, is_marian_dir, load_marian, save_ctranslate2, save_marian
from .tokenizer import Tokenizer
from .transformer import Transformer

log = logging.getLogger(__name__)

Format = Literal["ferry", "marian"]
CONVERT_TARGETS = ("ferry", "marian", "ctranslate2")


def detect_format(path: str | Path) -> Format:
    """``ferry`` (ferry checkpoint) or ``marian`` (Hugging Face Marian/OPUS-MT directory)."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"model directory {root} does not exist")
    if is_ferry_checkpoint(root):
        return "ferry"
    if is_marian_dir(root):
        return "marian"
    raise ValueError(
        f"{root} is neither a ferry checkpoint (config.json with format=ferry) nor a Hugging Face Marian "
        "directory (config.json with model_type=marian, source.spm, target.spm, vocab.json)"
    )


def quantize_int8(model: Transformer) -> Transformer:
    """Dynamic int8 quantization of every Linear (weights int8, activations quantized per call).
    CPU only; embeddings stay float32."""
    with warnings.catch_warnings():  # torch deprecates the API in favour of torchao, which we do not ship
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        quantized: Transformer = quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)
    return quantized


class LoadedModel(NamedTuple):
    """A model with its tokenizer and metadata, as ``load_model`` returns it."""

    model: Transformer
    tokenizer: Tokenizer
    info: CheckpointInfo


def load_model(
    path: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | Literal["int8"] = torch.float32,
) -> LoadedModel:
    """Load any supported directory onto ``device``; ``dtype="int8"`` quantizes float32 weights (CPU)."""
    fmt = detect_format(path)
    float_dtype = torch.float32 if dtype == "int8" else dtype
    assert isinstance(float_dtype, torch.dtype)
    if fmt == "ferry":
        model, tokenizer, info = load_checkpoint(path, device=device, dtype=float_dtype)
    else:
        model, tokenizer, info = load_marian(path, device=device, dtype=float_dtype)
    if dtype == "int8":
        if torch.device(device).type != "cpu":
            raise ValueError("dtype='int8' is CPU only; on a GPU use float16 or bfloat16")
        model = quantize_int8(model)
    return LoadedModel(model, tokenizer, info)


def _spm_paths(root: Path, fmt: Format, info: CheckpointInfo) -> tuple[Path, Path]:
    if fmt == "marian":
        return root / SOURCE_SPM, root / TARGET_SPM
    return root / info.source_spm, root / info.target_spm


def convert(src: str | Path, dst: str | Path, *, to: str, quantization: str | None = None) -> Path:
    """Convert a model directory: ``to`` is ``ferry``, ``marian`` (HF directory) or ``ctranslate2``.

    ``quantization`` applies to CTranslate2 output only (``int8``, ``float16``, ...)."""
    if to not in CONVERT_TARGETS:
        raise ValueError(f"unknown conversion target {to!r}; allowed: {', '.join(CONVERT_TARGETS)}")
    if quantization and to != "ctranslate2":
        raise ValueError("quantization applies to --to ctranslate2 only")
    root, out = Path(src), Path(dst)
    if root.resolve() == out.resolve():
        raise ValueError("input and output directories must differ")
    fmt = detect_format(root)
    if to == "ctranslate2":
        if fmt == "marian":
            return save_ctranslate2(root, out, quantization=quantization)
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            convert(root, tmp, to="marian")
            return save_ctranslate2(tmp, out, quantization=quantization)
    model, tokenizer, info = load_model(root, device="cpu")
    source_spm, target_spm = _spm_paths(root, fmt, info)
    if to == "marian":
        return save_marian(out, model, tokenizer, info, source_spm=source_spm, target_spm=target_spm)
    same_spm = source_spm.read_bytes() == target_spm.read_bytes()
    return save_checkpoint(
        out,
        model,
        info,
        source_spm=source_spm,
        target_spm=None if same_spm else target_spm,
        vocab=tokenizer.vocab,
    )
