"""What ``ListModels`` reports comes from ``Backend.describe`` (regression: int8 reported as float32)."""

from __future__ import annotations

from pathlib import Path

import pytest
from ferry.model.options import DecodeOptions, TranslationRequest, UnknownModelError
from ferry.model.translator import Translator
from ferry.server.engine import Engine
from ferry.server.registry import ModelRegistry, ServedModel


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_served_model_reports_the_weight_dtype(tiny_checkpoint: Path, dtype: str) -> None:
    model = ServedModel.from_engine(Engine(Translator(tiny_checkpoint, device="cpu", dtype=dtype)))
    assert (model.dtype, model.device) == (dtype, "cpu")


def test_registry_load_reports_int8(tiny_checkpoint: Path) -> None:
    registry = ModelRegistry.load([tiny_checkpoint], device="cpu", dtype="int8")
    assert [m.dtype for m in registry] == ["int8"]
    assert [m.max_length for m in registry] == [m.engine.backend.max_positions for m in registry]


def test_submit_routes_a_translation_request(tiny_checkpoint: Path) -> None:
    translator = Translator(tiny_checkpoint, device="cpu")
    registry = ModelRegistry([ServedModel.from_engine(Engine(translator))])
    served = next(iter(registry))
    request = TranslationRequest(("red cat", "  "), DecodeOptions(beam_size=2), model_id=served.model_id)
    registry.start()
    try:
        model, handle = registry.submit(request)
        results = handle.result(60)
    finally:
        registry.stop()
    assert model is served
    assert [r.text for r in results] == [translator.translate_batch(["red cat"], beam_size=2)[0].text, ""]
    with pytest.raises(UnknownModelError, match="not served"):
        registry.submit(TranslationRequest(("red cat",), source_language="xx", target_language="zz"))
