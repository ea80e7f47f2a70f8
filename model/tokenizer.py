"""SentencePiece tokenization (joint or separate source/target models, optional shared vocab file)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

# ferry's own SentencePiece models reserve these ids (TransformerConfig defaults match).
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


class Tokenizer:
    """Text <-> ids for one language pair.

    Without ``vocab`` the SentencePiece ids are the model ids (ferry checkpoints). With ``vocab``
    (piece -> id, as in Marian's vocab.json) pieces are mapped through it, unknown pieces to ``unk_id``.
    """

    def __init__(
        self,
        source_model: str | Path,
        target_model: str | Path | None = None,
        *,
        vocab: dict[str, int] | None = None,
        eos_id: int = EOS_ID,
        unk_id: int = UNK_ID,
    ) -> None:
        self.source = spm.SentencePieceProcessor(model_file=str(source_model))
        self.target = (
            self.source
            if target_model is None or Path(target_model) == Path(source_model)
            else spm.SentencePieceProcessor(model_file=str(target_model))
        )
        self.vocab = vocab
        self.id_to_piece = {i: p for p, i in vocab.items()} if vocab is not None else None
        self.eos_id = eos_id
        self.unk_id = unk_id

    def encode_source(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text with EOS appended (an empty text gives just ``[eos]``)."""
        if self.vocab is None:
            ids: list[list[int]] = self.source.encode(list(texts), out_type=int)
            return [[*row, self.eos_id] for row in ids]
        codes, rest = zip(*(split_language_code(t) for t in texts)) if texts else ((), ())
        pieces: list[list[str]] = self.source.encode(list(rest), out_type=str)
        vocab = self.vocab
        return [[vocab.get(p, self.unk_id) for p in [*c, *row]] + [self.eos_id] for c, row in zip(codes, pieces)]

    def encode_target(self, texts: Sequence[str]) -> list[list[int]]:
        """Target ids without BOS/EOS (training adds them)."""
        if self.vocab is None:
            ids: list[list[int]] = self.target.encode(list(texts), out_type=int)
            return ids
        pieces: list[list[str]] = self.target.encode(list(texts), out_type=str)
        return [[self.vocab.get(p, self.unk_id) for p in row] for row in pieces]

    def decode_target(self, ids: Sequence[int]) -> str:
        if self.id_to_piece is None:
            text: str = self.target.decode(list(ids))
            return text
        # As Marian/transformers: unknown ids are dropped, and pieces the target SentencePiece model
        # does not know (the vocabulary is joint) come back raw, so their "▁" are turned into spaces.
        pieces = [self.id_to_piece[i] for i in ids if i != self.unk_id and i in self.id_to_piece]
        decoded: str = self.target.decode_pieces(pieces)
        return decoded.replace("\u2581", " ").strip()

    @property
    def source_vocab_size(self) -> int:
        return len(self.vocab) if self.vocab is not None else int(self.source.get_piece_size())


def split_language_code(text: str) -> tuple[list[str], str]:
    """Multilingual Marian models take the target language as a leading ``>>xxx<<`` token, kept
    whole (not split by SentencePiece): returns ``([">>xxx<<"], rest)`` or ``([], text)``."""
    end = text.find("<<") if text.startswith(">>") else -1
    if end == -1:
        return [], text
    return [text[: end + 2]], text[end + 2 :]


def train_sentencepiece(
    texts: Iterable[str],
    model_prefix: str | Path,
    *,
    vocab_size: int,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
    input_sentence_size: int = 2_000_000,
) -> Path:
    """Train a SentencePiece model with ferry's special ids; returns the ``.model`` path."""
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_prefix=str(model_prefix),
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        input_sentence_size=input_sentence_size,
        shuffle_input_sentence=True,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return Path(f"{model_prefix}.model")
