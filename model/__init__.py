"""ferry.model: the encoder–decoder Transformer, search, tokenization, checkpoints and ``Translator``.

Names are imported on first use (PEP 562), so ``import ferry.model.config`` and the ``ferry`` command
line stay light: torch loads only when a model class is touched.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "BeamSearcher": "search",
    "CheckpointInfo": "checkpoint",
    "DecoderCache": "cache",
    "EncoderOutput": "transformer",
    "GreedySearcher": "search",
    "Hypothesis": "search",
    "Tokenizer": "tokenizer",
    "TransformerConfig": "config",
    "Transformer": "transformer",
    "TranslationResult": "translator",
    "Translator": "translator",
    "load_checkpoint": "checkpoint",
    "make_searcher": "search",
    "run_search": "search",
    "save_checkpoint": "checkpoint",
}

__all__ = [
    "BeamSearcher",
    "CheckpointInfo",
    "DecoderCache",
    "EncoderOutput",
    "GreedySearcher",
    "Hypothesis",
    "Tokenizer",
    "Transformer",
    "TransformerConfig",
    "TranslationResult",
    "Translator",
    "load_checkpoint",
    "make_searcher",
    "run_search",
    "save_checkpoint",
]

if TYPE_CHECKING:
    from .cache import DecoderCache
    from .checkpoint import CheckpointInfo, load_checkpoint, save_checkpoint
    from .config import TransformerConfig
    from .search import BeamSearcher, GreedySearcher, Hypothesis, make_searcher, run_search
    from .tokenizer import Tokenizer
    from .transformer import EncoderOutput, Transformer
    from .translator import TranslationResult, Translator


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ferry.model' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
