"""ferry: neural machine translation service (encoder–decoder Transformer over gRPC)."""

import os
from pathlib import Path

__version__ = "0.1.0"

_SHIPPED_MODEL = Path(__file__).resolve().parent.parent / "models" / "en-de"


def default_model_dir() -> Path:
    """The model used when none is named: ``$FERRY_DEFAULT_MODEL`` if set (containers bake the model
    in and set it), else the shipped ``models/en-de`` of a source checkout."""
    env = os.environ.get("FERRY_DEFAULT_MODEL")
    return Path(env) if env else _SHIPPED_MODEL
