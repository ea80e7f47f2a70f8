"""Model configuration: one frozen dataclass describes every supported architecture."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Activation = Literal["relu", "gelu", "swish"]
NormPosition = Literal["post", "pre"]
Positions = Literal["sinusoidal", "learned"]


@dataclass(frozen=True)
class TransformerConfig:
    """Hyper-parameters of an encoder–decoder Transformer.

    The family covers the original Transformer (post-norm, sinusoidal positions), pre-norm
    variants, grouped-query attention and Marian/OPUS-MT models exactly.
    """

    src_vocab_size: int
    """Number of source token ids (embedding rows of the encoder)."""

    tgt_vocab_size: int
    """Number of target token ids (decoder embedding rows and output logits)."""

    d_model: int = 512
    """Width of every hidden state."""

    n_heads: int = 8
    """Number of query heads in every attention block."""

    n_kv_heads: int | None = None
    """Number of key/value heads (grouped-query attention); ``None`` means ``n_heads`` (plain MHA)."""

    encoder_layers: int = 6
    """Number of encoder layers."""

    decoder_layers: int = 6
    """Number of decoder layers."""

    ffn_dim: int = 2048
    """Inner width of the position-wise feed-forward blocks."""

    activation: Activation = "relu"
    """Feed-forward activation: ``relu``, ``gelu`` or ``swish`` (SiLU, as in Marian)."""

    norm_position: NormPosition = "post"
    """``post``: LayerNorm after each residual add (Vaswani, Marian); ``pre``: before each block,
    with a final LayerNorm after the encoder and decoder stacks."""

    layer_norm_eps: float = 1e-5
    """Epsilon of every LayerNorm."""

    positions: Positions = "sinusoidal"
    """``sinusoidal``: fixed table laid out as ``[sin | cos]`` halves from position 0 (Marian's layout);
    ``learned``: a trained embedding table."""

    max_positions: int = 512
    """Longest sequence (source or target, in tokens) the position table covers."""

    scale_embedding: bool = True
    """Multiply token embeddings by ``sqrt(d_model)`` before adding positions."""

    share_embeddings: bool = True
    """Source and target use one embedding matrix (needs ``src_vocab_size == tgt_vocab_size``)."""

    tie_output: bool = True
    """The output projection reuses the target embedding matrix."""

    attention_bias: bool = True
    """Attention projections (q, k, v, out) have a bias term."""

    ffn_bias: bool = True
    """Feed-forward projections have a bias term."""

    final_logits_bias: bool = False
    """Add a learned (or imported) bias vector to the output logits (Marian has one)."""

    dropout: float = 0.1
    """Dropout on embeddings, attention outputs and feed-forward outputs (training only)."""

    attention_dropout: float = 0.0
    """Dropout on attention probabilities (training only)."""

    activation_dropout: float = 0.0
    """Dropout after the feed-forward activation (training only)."""

    pad_id: int = 0
    """Padding token id; never generated."""

    unk_id: int = 1
    """Unknown-piece token id."""

    bos_id: int = 2
    """Beginning-of-sentence id, or ``-1`` when the vocabulary has none (Marian)."""

    eos_id: int = 3
    """End-of-sentence id: appended to every source and ends every hypothesis."""

    decoder_start_id: int = 2
    """First decoder input token (``bos_id`` for ferry models, ``pad_id`` for Marian)."""

    def __post_init__(self) -> None:
        def bad(field: str, value: Any, allowed: str) -> ValueError:
            return ValueError(f"TransformerConfig.{field}={value!r} is invalid: {allowed}")

        for name in (
            "src_vocab_size",
            "tgt_vocab_size",
            "d_model",
            "n_heads",
            "encoder_layers",
            "decoder_layers",
            "ffn_dim",
            "max_positions",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(name, value, "must be an integer >= 1")
        if self.n_kv_heads is not None and (isinstance(self.n_kv_heads, bool) or not isinstance(self.n_kv_heads, int)):
            raise bad("n_kv_heads", self.n_kv_heads, "must be an integer or null")
        if not (isinstance(self.layer_norm_eps, int | float) and self.layer_norm_eps > 0):
            raise bad("layer_norm_eps", self.layer_norm_eps, "must be a number > 0")
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
                raise bad(name, value, "must be a number in [0, 1)")
        for name in ("pad_id", "unk_id", "bos_id", "eos_id", "decoder_start_id"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int):
                raise bad(name, getattr(self, name), "must be an integer")
        if self.d_model % self.n_heads:
            raise bad("n_heads", self.n_heads, f"must divide d_model={self.d_model}")
        if self.kv_heads < 1 or self.n_heads % self.kv_heads:
            raise bad("n_kv_heads", self.n_kv_heads, f"must divide n_heads={self.n_heads}")
        if self.activation not in ("relu", "gelu", "swish"):
            raise bad("activation", self.activation, "expected relu, gelu or swish")
        if self.norm_position not in ("post", "pre"):
            raise bad("norm_position", self.norm_position, "expected post or pre")
        if self.positions not in ("sinusoidal", "learned"):
            raise bad("positions", self.positions, "expected sinusoidal or learned")
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise bad("share_embeddings", True, "needs src_vocab_size == tgt_vocab_size")
        for name in ("pad_id", "eos_id", "decoder_start_id", "unk_id"):
            value = getattr(self, name)
            if not 0 <= value < self.tgt_vocab_size:
                raise bad(name, value, f"must be in [0, {self.tgt_vocab_size})")

    @property
    def kv_heads(self) -> int:
        """Effective number of key/value heads."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.d_model // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TransformerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TransformerConfig fields {unknown}; known: {sorted(known)}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TransformerConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def transformer_tiny(vocab_size: int) -> TransformerConfig:
    """A few-thousand-parameter model for unit tests."""
    return TransformerConfig(
        src_vocab_size=vocab_size,
        tgt_vocab_size=vocab_size,
        d_model=32,
        n_heads=4,
        encoder_layers=2,
        decoder_layers=2,
        ffn_dim=64,
        max_positions=128,
        dropout=0.0,
    )


def transformer_small(vocab_size: int) -> TransformerConfig:
    """The shipped Multi30k model: small enough to train on a CPU in hours and ship in ≤ 25 MB."""
    return TransformerConfig(
        src_vocab_size=vocab_size,
        tgt_vocab_size=vocab_size,
        d_model=256,
        n_heads=4,
        encoder_layers=4,
        decoder_layers=4,
        ffn_dim=1024,
        norm_position="pre",
        max_positions=256,
        dropout=0.2,
        attention_dropout=0.1,
        activation_dropout=0.1,
    )


def transformer_base(vocab_size: int) -> TransformerConfig:
    """Vaswani et al. (2017) base model."""
    return TransformerConfig(src_vocab_size=vocab_size, tgt_vocab_size=vocab_size)


PRESETS = {
    "tiny": transformer_tiny,
    "small": transformer_small,
    "base": transformer_base,
}
