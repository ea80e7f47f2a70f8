"""``ferry translate -s auto`` locally: detect each text's language and translate it with the model for
(detected, target): the one given with ``--model`` (texts in another language are an error), or the
default model for that pair (loaded on first use)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ferry.model.options import DecodeOptions, TranslationResult
from ferry.text import TextOptions, segment

if TYPE_CHECKING:
    from ferry.model.translator import Translator


def detection_input(texts: Sequence[str], text: TextOptions) -> list[str]:
    """What the detector reads: the texts, or an HTML text's sentences (markup left out)."""
    if text.format != "html":
        return list(texts)
    return [" ".join(segment([t], TextOptions(format="html", split_sentences=False)).sentences) for t in texts]


class AutoRouter:
    """Translators by detected source language."""

    def __init__(self, model: str | None, target_language: str, *, device: str, dtype: str | None) -> None:
        self.model = model
        self.target = target_language.strip().lower()
        self.device = device
        self.dtype = dtype
        self._by_language: dict[str, Translator] = {}

    def translator(self, language: str) -> Translator:
        """The translator for ``language`` → target; ValueError naming the language and what is on offer."""
        if language in self._by_language:
            return self._by_language[language]
        from ferry import default_model_dir
        from ferry.model.translator import load_translator

        if self.model:
            translator = load_translator(self.model, device=self.device, dtype=self.dtype)
            pair = f"{translator.info.source_language}-{translator.info.target_language}"
            if translator.info.source_language.lower() != language:
                raise ValueError(
                    f"a text was detected as {language!r} but --model {self.model} translates {pair}; "
                    "give -s and a model for that language"
                )
            path = Path(self.model)
        else:
            try:
                path = default_model_dir(language, self.target)
            except FileNotFoundError as e:
                raise ValueError(f"a text was detected as {language!r}: {e}") from None
            translator = load_translator(path, device=self.device, dtype=self.dtype)
        self._by_language[language] = translator
        return translator

    def translate(self, texts: Sequence[str], *, options: DecodeOptions) -> list[TranslationResult]:
        """One result per text, in order, each translated by the model of its detected language."""
        from ferry.text.detect import detect

        detected = [d[0][0] if d else "" for d in detect(detection_input(texts, options.text))]
        known = [lang for lang in detected if lang]
        fallback = max(set(known), key=known.count) if known else ""
        groups: dict[str, list[int]] = {}
        for i, lang in enumerate(detected):
            groups.setdefault(lang or fallback, []).append(i)
        results: list[TranslationResult | None] = [None] * len(texts)
        for lang, indices in groups.items():
            if not lang:  # nothing to detect (blank lines): nothing to translate either
                for i in indices:
                    results[i] = TranslationResult(text=texts[i])
                continue
            group_options = dataclasses.replace(options, text=dataclasses.replace(options.text, language=lang))
            for i, r in zip(indices, self.translator(lang).translate([texts[i] for i in indices], group_options)):
                results[i] = r
        return [r for r in results if r is not None]
