"""The models one server hosts, each with its own ``Engine``, found by language pair or model id."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ferry.model.options import MAX_BEAM_SIZE, TranslationRequest, UnknownModelError

from .engine import Engine, EngineConfig
from .pool import EnginePool
from .requests import RequestHandle

log = logging.getLogger("ferry.server")


@dataclass
class ServedModel:
    """One model and its engine (or pool of engines), with what clients may know about it."""

    model_id: str
    version: str
    source_language: str
    target_language: str
    engine: Engine | EnginePool
    device: str
    dtype: str
    max_input_tokens: int
    max_length: int
    max_beam_size: int = MAX_BEAM_SIZE

    @property
    def pair(self) -> str:
        return f"{self.source_language}-{self.target_language}"

    def describe(self) -> str:
        return f"{self.pair} (model_id {self.model_id!r})"

    @classmethod
    def from_engine(cls, engine: Engine | EnginePool) -> ServedModel:
        """Describe the engine's model (through ``Backend.describe``; int8 models report ``int8``)."""
        info = engine.backend.describe()
        return cls(
            model_id=info.model_id,
            version=info.version,
            source_language=info.source_language,
            target_language=info.target_language,
            engine=engine,
            device=info.device,
            dtype=info.dtype,
            max_input_tokens=engine.max_input_tokens,
            max_length=engine.backend.max_positions,
        )


class ModelRegistry:
    """Routes requests to models. A language pair served by several models goes to the first one
    added; ``model_id`` picks any of them."""

    def __init__(self, models: Sequence[ServedModel] = ()) -> None:
        self._by_id: dict[str, ServedModel] = {}
        self._by_pair: dict[tuple[str, str], ServedModel] = {}
        for m in models:
            self.add(m)

    def add(self, model: ServedModel) -> None:
        if model.model_id in self._by_id:
            raise ValueError(f"two models have model_id {model.model_id!r}; model ids must be unique per server")
        self._by_id[model.model_id] = model
        pair = (model.source_language, model.target_language)
        if pair in self._by_pair:
            log.warning(
                "%s is also served by %s; requests without model_id go to the latter",
                model.pair,
                self._by_pair[pair].model_id,
            )
        self._by_pair.setdefault(pair, model)

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def served(self) -> str:
        return ", ".join(m.describe() for m in self) or "none"

    def resolve(self, source_language: str, target_language: str, model_id: str = "") -> ServedModel:
        """The model for a request; raises ``UnknownModelError`` naming the field and what is served."""
        src, tgt = source_language.strip().lower(), target_language.strip().lower()
        if model_id:
            model = self._by_id.get(model_id)
            if model is None:
                raise UnknownModelError(f"model_id {model_id!r} is not served; served: {self.served()}")
            if (src and src != model.source_language) or (tgt and tgt != model.target_language):
                raise UnknownModelError(
                    f"model_id {model_id!r} translates {model.pair}, not {src or '?'}-{tgt or '?'}; "
                    "leave source_language/target_language empty or make them match"
                )
            return model
        if not src or not tgt:
            missing = "source_language" if not src else "target_language"
            raise UnknownModelError(f"{missing} is empty; set both languages or model_id; served: {self.served()}")
        model = self._by_pair.get((src, tgt))
        if model is None:
            raise UnknownModelError(f"language pair {src}-{tgt} is not served; served: {self.served()}")
        return model

    def submit(self, request: TranslationRequest) -> tuple[ServedModel, RequestHandle]:
        """Route ``request`` to its model and queue it there: the one entry point every transport uses
        once it has mapped its wire format onto a ``TranslationRequest``. Raises what ``resolve`` and
        ``Engine.submit`` raise (all ``TranslationError``s; ``status_of`` maps them)."""
        model = self.resolve(request.source_language, request.target_language, request.model_id)
        return model, model.engine.submit(request.texts, request.options, deadline=request.deadline)

    # ------------------------------------------------------------------ engines
    def start(self) -> None:
        for m in self:
            m.engine.start()

    def drain(self, timeout: float) -> bool:
        """Stop admitting and wait for accepted work on every engine; True when all finished."""
        deadline = time.monotonic() + timeout
        return all([m.engine.drain(max(0.0, deadline - time.monotonic())) for m in self])

    def stop(self) -> None:
        for m in self:
            m.engine.stop()

    @classmethod
    def load(
        cls,
        paths: Sequence[str | Path],
        *,
        device: str = "auto",
        dtype: str | None = None,
        config: EngineConfig | None = None,
        engines: int = 1,
        threads: int = 0,
    ) -> ModelRegistry:
        """Load every model directory, each with an engine (not started yet); ``engines > 1`` (CPU
        only) gives each model that many engines over its one copy of the weights, sharing ``threads``
        torch threads (``EnginePool``)."""
        from ferry.model.translator import load_translator

        registry = cls()
        for path in paths:
            translator = load_translator(path, device=device, dtype=dtype)
            if dtype == "int8":
                log.warning(
                    "int8 quantizes activations per batch: a sentence's result can depend on what it is "
                    "batched with (docs/serving.md); use float32 where that matters"
                )
            engine = (
                Engine(translator, config)
                if engines == 1
                else EnginePool(translator, config, engines=engines, threads=threads)
            )
            model = ServedModel.from_engine(engine)
            registry.add(model)
            log.info("loaded %s from %s on %s/%s", model.describe(), path, model.device, model.dtype)
        return registry
