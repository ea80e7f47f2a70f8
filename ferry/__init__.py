"""ferry: neural machine translation service (encoder–decoder Transformer over gRPC)."""

import json
import os
from pathlib import Path

__version__ = "0.1.0"

_SHIPPED_MODELS = Path(__file__).resolve().parent.parent / "models"
DEFAULT_PAIR = ("en", "de")
"""The language pair used when a command names none (``ferry translate`` without ``-s``/``-t``)."""


def default_model_dirs() -> list[Path]:
    """The models used when none is named: ``$FERRY_DEFAULT_MODEL`` if set (one directory, or several
    separated by ``os.pathsep``; containers bake the models in and set it), else every shipped model
    under ``models/`` of a source checkout (``models/en-de``, ``models/de-en``), sorted by name."""
    env = os.environ.get("FERRY_DEFAULT_MODEL")
    if env:
        return [Path(p) for p in env.split(os.pathsep) if p]
    return sorted(p for p in _SHIPPED_MODELS.glob("*") if (p / "config.json").is_file())


def _languages(model_dir: Path) -> tuple[str, str]:
    try:
        meta = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return "", ""
    return str(meta.get("source_language", "")), str(meta.get("target_language", ""))


def default_model_dir(source_language: str | None = None, target_language: str | None = None) -> Path:
    """The default model for a language pair (either side may be left open); without languages, the
    ``DEFAULT_PAIR`` (en→de) model if one is on offer, else the first. Raises ``FileNotFoundError``
    naming the pairs on offer when no default model serves the pair."""
    dirs = default_model_dirs()
    if not dirs:
        raise FileNotFoundError(f"no default model: {_SHIPPED_MODELS} holds none and $FERRY_DEFAULT_MODEL is unset")
    if not source_language and not target_language:
        # No pair named: en->de when one is on offer (models/ sorts de-en first), else the first model.
        return next((d for d in dirs if _languages(d) == DEFAULT_PAIR), dirs[0])
    for d in dirs:
        src, tgt = _languages(d)
        if source_language in (None, "", src) and target_language in (None, "", tgt):
            return d
    pairs = ", ".join("-".join(_languages(d)) for d in dirs)
    raise FileNotFoundError(
        f"no default model translates {source_language or '*'}->{target_language or '*'}; "
        f"the default models serve {pairs}; pass --model DIR"
    )
