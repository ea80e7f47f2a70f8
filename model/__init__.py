"""ferry.model: the encoder–decoder Transformer, search, tokenization, checkpoints and ``Translator``."""

from .cache import DecoderCache
from .checkpoint import CheckpointInfo, load_checkpoint, save_checkpoint
from .config import TransformerConfig
from .search import BeamSearcher, GreedySearcher, Hypothesis, make_searcher, run_search
from .tokenizer import Tokenizer
from .transformer import EncoderOutput, Transformer
from .translator import TranslationResult, Translator

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
