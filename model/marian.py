"""Hugging Face Marian (OPUS-MT) directories ⇄ ferry models, with exact numerical parity.

A *Marian directory* is what ``MarianMTModel.save_pretrained`` plus ``MarianTokenizer`` write:
``config.json`` (``model_type: marian``), ``model.safetensors`` (or ``pytorch_model.bin``),
``source.spm``/``target.spm`` (one SentencePiece model per side) and ``vocab.json`` (piece -> id, one
vocabulary shared by both sides; its ids are *not* the SentencePiece ids).

Marian details handled here: the decoder starts from the pad token, embeddings are shared and scaled
by ``sqrt(d_model)``, logits get ``final_logits_bias``, positions are ``[sin | cos]`` sinusoids from 0
(HF stores that table; ferry recomputes the identical one), the activation is swish, there is no BOS.

Export writes the same layout. Marian is post-norm only, so a pre-norm ferry model is written as
``PegasusForConditionalGeneration`` — HF's pre-norm twin of Marian (same sinusoids, same names, plus a
final LayerNorm per stack) — with the same Marian tokenizer files. A ``"ferry"`` block in config.json
keeps what HF cannot say (grouped-query heads, missing biases, BOS) so ferry → HF → ferry is lossless.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sentencepiece as spm
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from .checkpoint import CheckpointInfo
from .config import TransformerConfig
from .positions import sinusoidal_table
from .tokenizer import Tokenizer
from .transformer import Transformer

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
TORCH_FILE = "pytorch_model.bin"
VOCAB_FILE = "vocab.json"
SOURCE_SPM = "source.spm"
TARGET_SPM = "target.spm"
FERRY_KEY = "ferry"
"""config.json block holding the exact ferry config of an exported model."""

ARCHITECTURES = {"marian": "MarianMTModel", "pegasus": "PegasusForConditionalGeneration"}
"""HF model types read and written here: post-norm (marian) and pre-norm (pegasus)."""

HF_ACTIVATIONS = {"swish": "swish", "silu": "swish", "relu": "relu", "gelu": "gelu"}
HF_LAYER_NORM_EPS = 1e-5

_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")
_ENCODER_BLOCKS = [
    *((f"self_attn.{p}", f"self_attn.{p}") for p in _ATTENTION),
    ("self_attn_res.norm", "self_attn_layer_norm"),
    ("ffn.fc1", "fc1"),
    ("ffn.fc2", "fc2"),
    ("ffn_res.norm", "final_layer_norm"),
]
_DECODER_BLOCKS = [
    *_ENCODER_BLOCKS,
    *((f"cross_attn.{p}", f"encoder_attn.{p}") for p in _ATTENTION),
    ("cross_attn_res.norm", "encoder_attn_layer_norm"),
]


# ---------------------------------------------------------------------------------------------- names
def name_pairs(cfg: TransformerConfig) -> list[tuple[str, str]]:
    """``(ferry name, HF name)`` of every tensor, biases included whether or not ferry has them.
    The single table both directions use."""
    pairs: list[tuple[str, str]] = []
    stacks = (("encoder", cfg.encoder_layers, _ENCODER_BLOCKS), ("decoder", cfg.decoder_layers, _DECODER_BLOCKS))
    for side, layers, blocks in stacks:
        for i in range(layers):
            for ferry, hf in blocks:
                for w in ("weight", "bias"):
                    pairs.append((f"{side}_layers.{i}.{ferry}.{w}", f"model.{side}.layers.{i}.{hf}.{w}"))
    if cfg.norm_position == "pre":
        for side in ("encoder", "decoder"):
            pairs.extend((f"{side}_norm.{w}", f"model.{side}.layer_norm.{w}") for w in ("weight", "bias"))
    if cfg.share_embeddings:
        pairs.append(("src_embed.weight", "model.shared.weight"))
    else:
        pairs.append(("src_embed.weight", "model.encoder.embed_tokens.weight"))
        pairs.append(("tgt_embed.weight", "model.decoder.embed_tokens.weight"))
    if not cfg.tie_output:
        pairs.append(("output.weight", "lm_head.weight"))
    pairs.append(("logits_bias", "final_logits_bias"))
    return pairs


def _is_kv(name: str) -> bool:
    return name.endswith(("k_proj.weight", "k_proj.bias", "v_proj.weight", "v_proj.bias"))


def _is_optional_bias(name: str, cfg: TransformerConfig) -> bool:
    """Tensors HF always has that this ferry config leaves out (HF holds zeros there)."""
    if name == "logits_bias":
        return not cfg.final_logits_bias
    if not name.endswith(".bias") or ".norm." in name or name.endswith("_norm.bias"):
        return False
    return not (cfg.ffn_bias if ".ffn." in name else cfg.attention_bias)


def expand_kv_heads(t: Tensor, cfg: TransformerConfig) -> Tensor:
    """Grouped-query K/V projection (Hkv*D, ...) -> plain multi-head (H*D, ...): each K/V head is
    repeated for the query heads that share it, which is exactly what grouped attention computes."""
    group = cfg.n_heads // cfg.kv_heads
    if group == 1:
        return t
    heads = t.reshape(cfg.kv_heads, cfg.head_dim, *t.shape[1:])  # (Hkv, D, ...)
    return heads.repeat_interleave(group, dim=0).reshape(cfg.n_heads * cfg.head_dim, *t.shape[1:])  # (H*D, ...)


def collapse_kv_heads(t: Tensor, cfg: TransformerConfig, name: str) -> Tensor:
    """Inverse of ``expand_kv_heads``; raises if the repeated heads are not identical."""
    group = cfg.n_heads // cfg.kv_heads
    if group == 1:
        return t
    heads = t.reshape(cfg.kv_heads, group, cfg.head_dim, *t.shape[1:])  # (Hkv, G, D, ...)
    first = heads[:, :1]
    if not torch.equal(heads, first.expand_as(heads)):
        raise ValueError(f"{name}: key/value heads differ within a group; cannot restore n_kv_heads={cfg.kv_heads}")
    return first.reshape(cfg.kv_heads * cfg.head_dim, *t.shape[1:])  # (Hkv*D, ...)


def hf_state_from_ferry(state: dict[str, Tensor], cfg: TransformerConfig) -> dict[str, Tensor]:
    """ferry state dict -> HF Marian/Pegasus tensors (missing biases become zeros, K/V heads expanded)."""
    out: dict[str, Tensor] = {}
    for ferry, hf in name_pairs(cfg):
        if ferry in state:
            t = state[ferry].detach()
        elif _is_optional_bias(ferry, cfg):
            size = cfg.tgt_vocab_size if ferry == "logits_bias" else _bias_size(state, ferry)
            t = torch.zeros(size, dtype=state["src_embed.weight"].dtype)
        else:
            raise ValueError(f"ferry state has no {ferry!r}; the model does not match its config")
        if _is_kv(ferry):
            t = expand_kv_heads(t, cfg)
        if ferry == "logits_bias":
            t = t.reshape(1, -1)  # (1, V) as HF stores it
        out[hf] = t.contiguous()
    return out


def _bias_size(state: dict[str, Tensor], bias_name: str) -> int:
    return int(state[bias_name.removesuffix("bias") + "weight"].shape[0])


def ferry_state_from_hf(hf: dict[str, Tensor], cfg: TransformerConfig) -> dict[str, Tensor]:
    """HF Marian/Pegasus tensors -> ferry state dict for ``cfg``; raises on anything ``cfg`` cannot hold."""
    hf = _normalize_hf_names(hf, cfg)
    out: dict[str, Tensor] = {}
    for ferry, name in name_pairs(cfg):
        if name not in hf:
            raise ValueError(f"HF weights have no {name!r} (needed for {ferry})")
        t = hf[name]
        if ferry == "logits_bias":
            t = t.reshape(-1)  # (V,)
        if _is_kv(ferry):
            t = collapse_kv_heads(t, cfg, name)
        if _is_optional_bias(ferry, cfg):
            if torch.count_nonzero(t):
                raise ValueError(f"{name} is not zero but the ferry config has no such bias")
            continue
        out[ferry] = t
    return out


def _normalize_hf_names(hf: dict[str, Tensor], cfg: TransformerConfig) -> dict[str, Tensor]:
    """Accept the spellings older exports use: no ``model.`` prefix (MarianModel), tied copies of the
    shared embedding instead of ``model.shared.weight``. Checks the stored position tables."""
    if not any(k.startswith("model.") for k in hf):
        hf = {(k if k in ("final_logits_bias", "lm_head.weight") else f"model.{k}"): v for k, v in hf.items()}
    hf = dict(hf)
    if cfg.share_embeddings and "model.shared.weight" not in hf:
        for alias in ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight"):
            if alias in hf:
                hf["model.shared.weight"] = hf[alias]
                break
    if "final_logits_bias" not in hf:  # HF treats a missing bias as zeros
        hf["final_logits_bias"] = torch.zeros(1, cfg.tgt_vocab_size)
    if cfg.tie_output and "lm_head.weight" in hf:
        embed = hf["model.shared.weight" if cfg.share_embeddings else "model.decoder.embed_tokens.weight"]
        if not torch.equal(hf["lm_head.weight"], embed):
            raise ValueError("lm_head.weight differs from the target embedding but tie_word_embeddings is true")
    for side in ("encoder", "decoder"):
        table = hf.get(f"model.{side}.embed_positions.weight")
        if table is not None:
            expected = sinusoidal_table(table.shape[0], table.shape[1])
            if not torch.allclose(table.float(), expected, atol=1e-4):
                raise ValueError(f"model.{side}.embed_positions.weight is not Marian's sinusoid table")
    return hf


# ---------------------------------------------------------------------------------------------- config
def config_from_hf(hf: dict[str, Any], vocab: dict[str, int] | None) -> TransformerConfig:
    """TransformerConfig equivalent to an HF Marian (post-norm) or Pegasus (pre-norm) config.json."""
    model_type = hf.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"config.json model_type={model_type!r} is not supported; expected one of {sorted(ARCHITECTURES)}"
        )

    def need(key: str) -> Any:
        if hf.get(key) is None:
            raise ValueError(f"config.json has no {key!r}")
        return hf[key]

    heads, dec_heads = need("encoder_attention_heads"), hf.get("decoder_attention_heads", hf["encoder_attention_heads"])
    ffn, dec_ffn = need("encoder_ffn_dim"), hf.get("decoder_ffn_dim", hf["encoder_ffn_dim"])
    if heads != dec_heads or ffn != dec_ffn:
        raise ValueError(
            f"encoder and decoder differ (heads {heads}/{dec_heads}, ffn {ffn}/{dec_ffn}); ferry needs them equal"
        )
    act = hf.get("activation_function", "gelu")
    if act not in HF_ACTIVATIONS:
        raise ValueError(f"activation_function={act!r} is not supported; allowed: {sorted(HF_ACTIVATIONS)}")
    vocab_size = int(need("vocab_size"))
    share = bool(hf.get("share_encoder_decoder_embeddings", True)) if model_type == "marian" else True
    tgt_vocab = vocab_size if share else int(hf.get("decoder_vocab_size") or vocab_size)
    pad = int(need("pad_token_id"))
    eos = hf.get("eos_token_id")
    eos = int(eos[0] if isinstance(eos, list) else need("eos_token_id"))
    bos = hf.get("bos_token_id")
    unk = vocab.get("<unk>", 1) if vocab else int(hf.get("unk_token_id", 1))
    return TransformerConfig(
        src_vocab_size=vocab_size,
        tgt_vocab_size=tgt_vocab,
        d_model=int(need("d_model")),
        n_heads=int(heads),
        encoder_layers=int(need("encoder_layers")),
        decoder_layers=int(need("decoder_layers")),
        ffn_dim=int(ffn),
        activation=HF_ACTIVATIONS[act],  # type: ignore[arg-type]
        norm_position="post" if model_type == "marian" else "pre",
        layer_norm_eps=HF_LAYER_NORM_EPS,
        positions="sinusoidal",
        max_positions=int(hf.get("max_position_embeddings", 512)),
        scale_embedding=bool(hf.get("scale_embedding", False)),
        share_embeddings=share,
        tie_output=bool(hf.get("tie_word_embeddings", True)),
        final_logits_bias=True,
        dropout=float(hf.get("dropout", 0.1)),
        attention_dropout=float(hf.get("attention_dropout", 0.0)),
        activation_dropout=float(hf.get("activation_dropout", 0.0)),
        pad_id=pad,
        unk_id=unk,
        bos_id=-1 if bos is None else int(bos),
        eos_id=eos,
        decoder_start_id=pad if hf.get("decoder_start_token_id") is None else int(hf["decoder_start_token_id"]),
    )


_SHAPE_FIELDS = (
    "src_vocab_size", "tgt_vocab_size", "d_model", "n_heads", "encoder_layers", "decoder_layers", "ffn_dim",
    "activation", "norm_position", "positions", "max_positions", "scale_embedding", "share_embeddings",
    "tie_output", "pad_id", "eos_id", "decoder_start_id", "layer_norm_eps",
)  # fmt: skip


def config_to_hf(cfg: TransformerConfig, *, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """HF config.json for ``cfg``: Marian when post-norm, Pegasus (pre-norm Marian) otherwise."""
    if cfg.positions != "sinusoidal":
        raise ValueError("learned positions cannot be exported: Marian uses fixed sinusoidal positions")
    if cfg.layer_norm_eps != HF_LAYER_NORM_EPS:
        raise ValueError(f"layer_norm_eps={cfg.layer_norm_eps} cannot be exported: HF Marian fixes it at 1e-5")
    model_type = "marian" if cfg.norm_position == "post" else "pegasus"
    if model_type == "pegasus" and not cfg.share_embeddings:
        raise ValueError("a pre-norm model is exported as Pegasus, which needs share_embeddings=True")
    hf: dict[str, Any] = {
        "architectures": [ARCHITECTURES[model_type]],
        "model_type": model_type,
        "vocab_size": cfg.src_vocab_size,
        "d_model": cfg.d_model,
        "encoder_layers": cfg.encoder_layers,
        "decoder_layers": cfg.decoder_layers,
        "encoder_attention_heads": cfg.n_heads,
        "decoder_attention_heads": cfg.n_heads,
        "encoder_ffn_dim": cfg.ffn_dim,
        "decoder_ffn_dim": cfg.ffn_dim,
        "activation_function": cfg.activation,
        "max_position_embeddings": cfg.max_positions,
        "scale_embedding": cfg.scale_embedding,
        "tie_word_embeddings": cfg.tie_output,
        "dropout": cfg.dropout,
        "attention_dropout": cfg.attention_dropout,
        "activation_dropout": cfg.activation_dropout,
        "pad_token_id": cfg.pad_id,
        "eos_token_id": cfg.eos_id,
        "bos_token_id": cfg.bos_id if cfg.bos_id >= 0 else None,
        "decoder_start_token_id": cfg.decoder_start_id,
        "forced_eos_token_id": cfg.eos_id,
        "is_encoder_decoder": True,
        "use_cache": True,
        "dtype": "float32",
    }
    if model_type == "marian":
        hf["decoder_vocab_size"] = cfg.tgt_vocab_size
        hf["share_encoder_decoder_embeddings"] = cfg.share_embeddings
    else:  # read by CTranslate2's converter, which shares its BART loader between the two
        hf["normalize_before"] = True
        hf["normalize_embedding"] = False
    if extra:
        hf.update(extra)
    return hf


def _restore_config(derived: TransformerConfig, block: dict[str, Any]) -> TransformerConfig | None:
    """The exact ferry config saved at export, if it still describes these HF weights."""
    try:
        saved = TransformerConfig.from_dict(block["model"])
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("ignoring config.json %r block: %s", FERRY_KEY, exc)
        return None
    changed = [f for f in _SHAPE_FIELDS if getattr(saved, f) != getattr(derived, f)]
    if changed:
        log.warning("ignoring config.json %r block: it disagrees with the HF config on %s", FERRY_KEY, changed)
        return None
    return saved


# ---------------------------------------------------------------------------------------------- files
@dataclass
class MarianDir:
    """What a Marian directory holds, read but not yet turned into a model."""

    root: Path
    hf_config: dict[str, Any]
    cfg: TransformerConfig
    vocab: dict[str, int] | None
    """Piece -> id; ``None`` when the ids are the SentencePiece ids (an exported ferry model)."""
    info: CheckpointInfo


def is_marian_dir(path: str | Path) -> bool:
    cfg = Path(path) / CONFIG_FILE
    if not cfg.is_file():
        return False
    try:
        model_type = json.loads(cfg.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError):
        return False
    return model_type == "marian" or (model_type == "pegasus" and (Path(path) / VOCAB_FILE).is_file())


def read_hf_weights(root: Path) -> dict[str, Tensor]:
    """model.safetensors, else pytorch_model.bin loaded with ``weights_only=True`` (no pickle code)."""
    if (root / SAFETENSORS_FILE).is_file():
        return load_file(str(root / SAFETENSORS_FILE))
    if (root / TORCH_FILE).is_file():
        state = torch.load(root / TORCH_FILE, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"{root / TORCH_FILE} does not hold a state dict")
        return {k: v for k, v in state.items() if isinstance(v, Tensor)}
    raise FileNotFoundError(
        f"{root} has neither {SAFETENSORS_FILE} nor {TORCH_FILE}; sharded weights are not supported"
    )


def _spm_pieces(path: Path) -> list[str]:
    proc = spm.SentencePieceProcessor(model_file=str(path))
    return [proc.id_to_piece(i) for i in range(proc.get_piece_size())]


def read_marian_dir(path: str | Path) -> MarianDir:
    """Parse config, vocabulary and tokenizer metadata of a Marian directory (weights not read)."""
    root = Path(path)
    if not (root / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{root} has no {CONFIG_FILE}: not a model directory")
    hf_config = json.loads((root / CONFIG_FILE).read_text())
    for name in (SOURCE_SPM, TARGET_SPM, VOCAB_FILE):
        if not (root / name).is_file():
            raise FileNotFoundError(
                f"{root} has no {name}; a Marian directory needs source.spm, target.spm, vocab.json"
            )
    tok_cfg_path = root / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text()) if tok_cfg_path.is_file() else {}
    if tok_cfg.get("separate_vocabs"):
        raise ValueError(f"{root} uses separate source/target vocabularies (target_vocab.json); not supported")
    vocab: dict[str, int] | None = json.loads((root / VOCAB_FILE).read_text())
    assert vocab is not None
    cfg = config_from_hf(hf_config, vocab)
    if cfg.src_vocab_size < len(vocab):
        raise ValueError(f"vocab.json has {len(vocab)} entries but the model only {cfg.src_vocab_size} embeddings")
    block = hf_config.get(FERRY_KEY) if isinstance(hf_config.get(FERRY_KEY), dict) else None
    if block is not None:
        cfg = _restore_config(cfg, block) or cfg
    if _same_file(root / SOURCE_SPM, root / TARGET_SPM):
        spm_ids = {p: i for i, p in enumerate(_spm_pieces(root / SOURCE_SPM))}
        if vocab == spm_ids:
            vocab = None  # ids are the SentencePiece ids: a ferry-native tokenizer
    meta = block or {}
    model_id = meta.get("model_id") or root.resolve().name
    named = re.fullmatch(r"(?:.*[-_])?opus-mt-([A-Za-z_]+)-([A-Za-z_]+)", model_id)  # opus-mt-en-de
    info = CheckpointInfo(
        source_language=meta.get("source_language") or tok_cfg.get("source_lang") or (named and named[1]) or "",
        target_language=meta.get("target_language") or tok_cfg.get("target_lang") or (named and named[2]) or "",
        model_id=model_id,
        version=meta.get("version", ""),
        source_spm=SOURCE_SPM,
        target_spm=TARGET_SPM,
        extra={"imported_from": hf_config["model_type"]},
    )
    return MarianDir(root, hf_config, cfg, vocab, info)


def _same_file(a: Path, b: Path) -> bool:
    return a.read_bytes() == b.read_bytes()


def load_marian(
    path: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[Transformer, Tokenizer, CheckpointInfo]:
    """Load a Marian directory as a ferry model (same outputs as transformers, to the token)."""
    md = read_marian_dir(path)
    hf = read_hf_weights(md.root)
    try:
        state = ferry_state_from_hf(hf, md.cfg)
        cfg = md.cfg
    except ValueError as exc:
        derived = config_from_hf(md.hf_config, md.vocab)
        if md.cfg == derived:
            raise
        log.warning("config.json %r block does not fit the weights (%s); using the HF config", FERRY_KEY, exc)
        cfg, state = derived, ferry_state_from_hf(hf, derived)
    model = Transformer(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"tgt_embed.weight"} if cfg.share_embeddings else set()
    tied |= {"output.weight"} if cfg.tie_output else set()
    missing = [m for m in missing if m not in tied]
    if missing or unexpected:
        raise ValueError(f"{md.root}: weights do not match config.json: missing={missing} unexpected={unexpected}")
    model.to(device=device, dtype=dtype).eval()
    tokenizer = Tokenizer(
        md.root / SOURCE_SPM, md.root / TARGET_SPM, vocab=md.vocab, eos_id=cfg.eos_id, unk_id=cfg.unk_id
    )
    return model, tokenizer, md.info


# ---------------------------------------------------------------------------------------------- export
def _vocab_of(tokenizer: Tokenizer, cfg: TransformerConfig) -> dict[str, int]:
    """piece -> id for every id of the model (ferry-native tokenizers: the SentencePiece pieces)."""
    if tokenizer.vocab is not None:
        return dict(tokenizer.vocab)
    if tokenizer.target is not tokenizer.source:
        raise ValueError("a ferry model with separate source/target SentencePiece ids cannot share one vocab.json")
    size = tokenizer.source.get_piece_size()
    if size != cfg.src_vocab_size:
        raise ValueError(f"SentencePiece has {size} pieces but the model {cfg.src_vocab_size} embeddings")
    return {tokenizer.source.id_to_piece(i): i for i in range(size)}


def banned_ids(cfg: TransformerConfig) -> list[int]:
    """Ids the model must never generate (same rule as ``Translator.banned_ids``)."""
    return sorted({i for i in (cfg.pad_id, cfg.bos_id, cfg.decoder_start_id) if i >= 0 and i != cfg.eos_id})


def save_marian(
    out_dir: str | Path,
    model: Transformer,
    tokenizer: Tokenizer,
    info: CheckpointInfo,
    *,
    source_spm: str | Path,
    target_spm: str | Path,
) -> Path:
    """Write a Hugging Face directory (Marian, or Pegasus for pre-norm models) that transformers and
    CTranslate2's converter load as is."""
    cfg = model.cfg
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = _vocab_of(tokenizer, cfg)
    id_to_piece = {i: p for p, i in vocab.items()}
    block = {
        "model": cfg.to_dict(),
        "source_language": info.source_language,
        "target_language": info.target_language,
        "model_id": info.model_id,
        "version": info.version,
    }
    hf_config = config_to_hf(cfg, extra={FERRY_KEY: block})
    state = {k: v.to("cpu", torch.float32) for k, v in model.state_dict().items()}
    tensors = hf_state_from_ferry(state, cfg)
    if hf_config["model_type"] == "pegasus":  # transformers computes Marian's tables, loads Pegasus' own
        table = sinusoidal_table(cfg.max_positions, cfg.d_model)
        tensors |= {f"model.{side}.embed_positions.weight": table.clone() for side in ("encoder", "decoder")}
    save_file(tensors, str(out / SAFETENSORS_FILE), metadata={"format": "pt"})
    (out / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n")
    generation = {
        "decoder_start_token_id": cfg.decoder_start_id,
        "eos_token_id": cfg.eos_id,
        "pad_token_id": cfg.pad_id,
        "forced_eos_token_id": cfg.eos_id,
        "bad_words_ids": [[i] for i in banned_ids(cfg)],
        "num_beams": 4,
        "max_length": cfg.max_positions,
    }
    if cfg.bos_id >= 0:
        generation["bos_token_id"] = cfg.bos_id
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    for src, name in ((source_spm, SOURCE_SPM), (target_spm, TARGET_SPM)):
        if Path(src).resolve() != (out / name).resolve():
            shutil.copyfile(src, out / name)
    (out / VOCAB_FILE).write_text(json.dumps(vocab, ensure_ascii=False, indent=0) + "\n")
    tok_config = {
        "tokenizer_class": "MarianTokenizer",
        "source_lang": info.source_language or None,
        "target_lang": info.target_language or None,
        "eos_token": id_to_piece.get(cfg.eos_id, "</s>"),
        "unk_token": id_to_piece.get(cfg.unk_id, "<unk>"),
        "pad_token": id_to_piece.get(cfg.pad_id, "<pad>"),
        "model_max_length": cfg.max_positions,
        "separate_vocabs": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
    return out


# ---------------------------------------------------------------------------------------------- CTranslate2
def save_ctranslate2(hf_dir: str | Path, out_dir: str | Path, *, quantization: str | None = None) -> Path:
    """Convert a Marian/Pegasus directory with CTranslate2's own converter (the code behind
    ``ct2-transformers-converter``), fixing two assumptions that only hold for OPUS-MT models as
    released: the converter starts Marian decoders from a zero embedding (Pegasus ones from ``<pad>``)
    and drops the last vocabulary entry as an unused ``<pad>``. ferry-trained models start from their
    ``decoder_start_id`` (``<s>``) and keep ``<pad>`` at id 0; fine-tuned Marian models start from a
    ``<pad>`` embedding that training (tied to the output layer) made non-zero."""
    root = Path(hf_dir)
    md = read_marian_dir(root)
    cfg = md.cfg
    vocab = md.vocab or {p: i for i, p in enumerate(_spm_pieces(root / SOURCE_SPM))}
    start_piece = {i: p for p, i in vocab.items()}[cfg.decoder_start_id]
    hf = read_hf_weights(root)
    embed = _normalize_hf_names(hf, cfg)[
        "model.shared.weight" if cfg.share_embeddings else "model.decoder.embed_tokens.weight"
    ]
    zero_start = cfg.decoder_start_id == cfg.pad_id and not torch.count_nonzero(embed[cfg.decoder_start_id])
    pad_last = cfg.pad_id == cfg.tgt_vocab_size - 1
    marian = md.hf_config["model_type"] == "marian"
    loader = _start_token_loader(marian, start_piece, zero_start, pad_last)
    _converter(root, loader).convert(str(out_dir), quantization=quantization, force=True)
    return Path(out_dir)


def _converter(root: Path, loader: Any) -> Any:
    """A CTranslate2 ``Converter`` (its public extension point: implement ``_load`` to return a model
    spec) that reads the Hugging Face directory ``root`` and builds the spec with ``loader``. Nothing of
    CTranslate2's global loader registry is touched, so conversions may run concurrently."""
    import transformers
    from ctranslate2.converters import Converter

    class MarianDirConverter(Converter):
        def _load(self) -> Any:
            config = transformers.AutoConfig.from_pretrained(str(root))
            model_class = getattr(transformers, loader.architecture_name)
            dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
            with torch.no_grad():
                model = model_class.from_pretrained(str(root), config=config, dtype=dtype)
                tokenizer = transformers.AutoTokenizer.from_pretrained(str(root))
                return loader(model, tokenizer)

    return MarianDirConverter()


def _start_token_loader(marian: bool, start_piece: str, zero_start: bool, pad_last: bool) -> Any:
    """A CTranslate2 loader like its Marian (or Pegasus) one whose decoder starts from ``start_piece``'s embedding, and
    that drops the last vocabulary entry only when it is Marian's appended, never-used ``<pad>``
    (last, and all zeros so the zero-embedding start is exact)."""
    from ctranslate2.converters.transformers import BartLoader, MarianMTLoader, PegasusLoader

    base: type = MarianMTLoader if marian else PegasusLoader
    drop_pad = pad_last and zero_start

    class StartTokenLoader(base):
        def set_config(self, config: Any, model: Any, tokenizer: Any) -> None:
            super().set_config(config, model, tokenizer)
            if not zero_start:
                config.decoder_start_token = start_piece

        def set_decoder(self, spec: Any, decoder: Any) -> None:
            super().set_decoder(spec, decoder)
            spec.start_from_zero_embedding = zero_start

        def get_vocabulary(self, model: Any, tokenizer: Any) -> list[str]:
            tokens: list[str] = BartLoader.get_vocabulary(self, model, tokenizer)
            return tokens[:-1] if drop_pad else tokens

        def _remove_pad_weights(self, spec: Any) -> None:
            if drop_pad:
                super()._remove_pad_weights(spec)

    loader: Callable[[], Any] = StartTokenLoader
    return loader()
