"""Which model a command uses when none is named: every default model is served; translate and
evaluate pick by language pair."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from ferry import default_model_dir, default_model_dirs
from ferry.commands.serve import model_dirs


def _model(root: Path, src: str, tgt: str) -> Path:
    d = root / f"{src}-{tgt}"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"source_language": src, "target_language": tgt}))
    return d


def test_pair_picks_the_default_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    en_de, de_en = _model(tmp_path, "en", "de"), _model(tmp_path, "de", "en")
    monkeypatch.setenv("FERRY_DEFAULT_MODEL", f"{en_de}:{de_en}")
    assert default_model_dirs() == [en_de, de_en]
    assert default_model_dir() == en_de
    assert default_model_dir("de", "en") == de_en
    assert default_model_dir(None, "en") == de_en
    with pytest.raises(
        FileNotFoundError, match=r"no default model translates fr->de; the default models serve en-de, de-en"
    ):
        default_model_dir("fr", "de")


def test_serve_hosts_every_default_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    en_de, de_en = _model(tmp_path, "en", "de"), _model(tmp_path, "de", "en")
    monkeypatch.setenv("FERRY_DEFAULT_MODEL", f"{en_de}:{de_en}")
    monkeypatch.delenv("FERRY_MODEL", raising=False)
    assert model_dirs(argparse.Namespace(model=None)) == [en_de, de_en]
    assert model_dirs(argparse.Namespace(model=[str(de_en)])) == [de_en]


def test_checkout_ships_its_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FERRY_DEFAULT_MODEL", raising=False)
    assert "en-de" in [d.name for d in default_model_dirs()]


def test_no_pair_named_means_en_de_even_when_it_sorts_second(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Regression: models/ lists de-en before en-de, and commands without -s/-t (bench/compare.py,
    # ferry translate) silently fed English into the de-en model.
    de_en, en_de = _model(tmp_path, "de", "en"), _model(tmp_path, "en", "de")
    monkeypatch.setenv("FERRY_DEFAULT_MODEL", f"{de_en}:{en_de}")
    assert default_model_dirs() == [de_en, en_de]
    assert default_model_dir() == en_de
    monkeypatch.setenv("FERRY_DEFAULT_MODEL", str(de_en))
    assert default_model_dir() == de_en


def test_checkout_default_is_en_de(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FERRY_DEFAULT_MODEL", raising=False)
    assert default_model_dir().name == "en-de"
    assert default_model_dir("de", "en").name == "de-en"
