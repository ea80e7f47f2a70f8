"""Marian/OPUS-MT import and export: exact parity with transformers on the same random weights.

No network: a small random ``MarianMTModel`` and SentencePiece models trained here stand in for an
OPUS-MT download.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
import sentencepiece as spm
from ferry.model.checkpoint import load_checkpoint, save_checkpoint
from ferry.model.config import TransformerConfig
from ferry.model.fastpath import NativeInt8Linear
from ferry.model.loading import convert, detect_format, load_model
from ferry.model.marian import read_marian_dir
from ferry.model.options import DecodeOptions
from ferry.model.positions import sinusoidal_table
from ferry.model.search import Hypothesis
from ferry.model.transformer import Transformer
from ferry.model.translator import Translator, resolve_dtype
from transformers import MarianConfig, MarianMTModel, MarianTokenizer

from ferry.cli import main as ferry_main

pytestmark = pytest.mark.filterwarnings("ignore:Recommended. pip install sacremoses")

MAX_NEW = 14
EXTRA = ["the QUICK cat eats", ">>yy<< red dog runs", "water water water water water water water"]


def _train_spm(texts: list[str], prefix: Path, vocab_size: int) -> Path:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts * 8),
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type="unigram",
        hard_vocab_limit=False,
        character_coverage=1.0,
        minloglevel=2,
    )  # Marian's layout: <unk>=0, <s>=1, </s>=2, no pad
    return Path(f"{prefix}.model")


@pytest.fixture(scope="module")
def marian_dir(tmp_path_factory: pytest.TempPathFactory, tiny_pairs: list[tuple[str, str]]) -> Path:
    """A random Marian model saved the way OPUS-MT directories look (source/target spm, vocab.json)."""
    root = tmp_path_factory.mktemp("marian") / "opus-mt-xx-yy"
    root.mkdir()
    work = root.parent
    src_spm = _train_spm([s for s, _ in tiny_pairs], work / "source", 40)
    tgt_spm = _train_spm([t for _, t in tiny_pairs], work / "target", 48)
    pieces: list[str] = []
    for path in (src_spm, tgt_spm):
        proc = spm.SentencePieceProcessor(model_file=str(path))
        pieces += [proc.id_to_piece(i) for i in range(3, proc.get_piece_size())]
    # Marian: </s>=0, <unk>=1, joint pieces, a language tag, then <pad> last.
    tokens = ["</s>", "<unk>", ">>yy<<", *dict.fromkeys(pieces), "<pad>"]
    vocab = {p: i for i, p in enumerate(tokens)}
    pad = len(tokens) - 1
    cfg = MarianConfig(
        vocab_size=len(tokens),
        decoder_vocab_size=len(tokens),
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        activation_function="swish",
        scale_embedding=True,
        pad_token_id=pad,
        eos_token_id=0,
        decoder_start_token_id=pad,
        forced_eos_token_id=0,
        init_std=0.2,
    )
    torch.manual_seed(0)
    model = MarianMTModel(cfg)
    with torch.no_grad():
        model.final_logits_bias.normal_(0.0, 0.5)  # Marian's bias is not zero
    for path, name in ((src_spm, "source.spm"), (tgt_spm, "target.spm")):
        (root / name).write_bytes(path.read_bytes())
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "tokenizer_config.json").write_text(json.dumps({"source_lang": "xx", "target_lang": "yy"}))
    _train_briefly(model, MarianTokenizer.from_pretrained(str(root)), tiny_pairs)
    model.eval().save_pretrained(root)
    return root


def _train_briefly(model: MarianMTModel, tok: MarianTokenizer, pairs: list[tuple[str, str]], steps: int = 25) -> None:
    """A few steps on the tiny pairs: outputs then end with EOS at many lengths, some hit the cap."""
    batch = tok([s for s, _ in pairs], text_target=[t for _, t in pairs], return_tensors="pt", padding=True)
    batch["labels"][batch["labels"] == tok.pad_token_id] = -100
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.fixture(scope="module")
def sentences(tiny_pairs: list[tuple[str, str]]) -> list[str]:
    return [s for s, _ in tiny_pairs[:9]] + EXTRA


def _hf_generate(model_dir: Path, texts: list[str], beam: int, *, pad: int, bans: list[int]) -> list[list[int]]:
    tok = MarianTokenizer.from_pretrained(str(model_dir))
    hf = MarianMTModel.from_pretrained(str(model_dir)).eval()
    batch = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = hf.generate(
            **batch,
            num_beams=beam,
            do_sample=False,
            max_new_tokens=MAX_NEW,
            length_penalty=1.0,
            early_stopping=False,
            forced_eos_token_id=None,
            bad_words_ids=[[b] for b in bans],
            num_return_sequences=1,
        )
    return [_strip(row.tolist()[1:], hf.config.eos_token_id, pad) for row in out]


def _strip(ids: list[int], eos: int, pad: int) -> list[int]:
    for i, t in enumerate(ids):
        if t in (eos, pad):
            return ids[:i]
    return ids


def _ferry_ids(translator: Translator, texts: list[str], beam: int) -> list[list[int]]:
    rows = translator.tokenizer.encode_source(texts)
    nbest: list[list[Hypothesis]] = translator._search(rows, DecodeOptions(beam_size=beam, max_length=MAX_NEW))
    return [n[0].tokens for n in nbest]


# ---------------------------------------------------------------------------------------------- import
def test_detects_marian_and_maps_config(marian_dir: Path) -> None:
    assert detect_format(marian_dir) == "marian"
    model, tokenizer, info = load_model(marian_dir)
    cfg = model.cfg
    pad = cfg.tgt_vocab_size - 1
    assert (cfg.pad_id, cfg.eos_id, cfg.decoder_start_id, cfg.bos_id, cfg.unk_id) == (pad, 0, pad, -1, 1)
    assert cfg.activation == "swish" and cfg.norm_position == "post" and cfg.scale_embedding
    assert cfg.share_embeddings and cfg.tie_output and cfg.final_logits_bias
    assert (info.source_language, info.target_language, info.model_id) == ("xx", "yy", "opus-mt-xx-yy")
    assert tokenizer.vocab is not None


def test_positions_equal_hf_table(marian_dir: Path) -> None:
    hf = MarianMTModel.from_pretrained(str(marian_dir))
    for side in (hf.model.encoder, hf.model.decoder):
        table = side.embed_positions.weight
        assert torch.equal(table, sinusoidal_table(*table.shape))


def test_tokenizer_matches_hf(marian_dir: Path, sentences: list[str]) -> None:
    hf_tok = MarianTokenizer.from_pretrained(str(marian_dir))
    tokenizer = load_model(marian_dir)[1]
    ours = tokenizer.encode_source(sentences)
    assert ours == hf_tok(sentences).input_ids
    assert any(tokenizer.unk_id in row for row in ours)  # the upper-case word is unknown
    assert ours[-2][0] == hf_tok.convert_tokens_to_ids(">>yy<<")  # language tag kept whole
    ids = ours[0][:-1]
    assert tokenizer.decode_target(ids) == hf_tok.decode(ids, skip_special_tokens=True)


def test_logits_match_hf(marian_dir: Path, sentences: list[str]) -> None:
    hf_tok = MarianTokenizer.from_pretrained(str(marian_dir))
    hf = MarianMTModel.from_pretrained(str(marian_dir)).eval()
    model = load_model(marian_dir)[0]
    batch = hf_tok(sentences, return_tensors="pt", padding=True)
    tgt = torch.randint(0, model.cfg.tgt_vocab_size - 1, (len(sentences), 7))
    tgt[:, 0] = model.cfg.decoder_start_id
    with torch.no_grad():
        expected = hf(**batch, decoder_input_ids=tgt).logits
        got = model(batch.input_ids, batch.attention_mask.sum(1), tgt)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("beam", [1, 4])
def test_generate_parity(marian_dir: Path, sentences: list[str], beam: int) -> None:
    translator = Translator(marian_dir, device="cpu")
    cfg = translator.model.cfg
    expected = _hf_generate(marian_dir, sentences, beam, pad=cfg.pad_id, bans=translator.banned_ids()[:1])
    got = _ferry_ids(translator, sentences, beam)
    assert got == expected
    lengths = {len(ids) for ids in got}
    assert len(lengths) > 2 and MAX_NEW in lengths  # both EOS-terminated and length-capped outputs
    texts = [r.text for r in translator.translate_batch(sentences, beam_size=beam, max_length=MAX_NEW)]
    hf_tok = MarianTokenizer.from_pretrained(str(marian_dir))
    assert texts == hf_tok.batch_decode(expected, skip_special_tokens=True)


def test_pytorch_bin_weights(marian_dir: Path, tmp_path: Path) -> None:
    """Older OPUS-MT uploads ship pytorch_model.bin with every tied copy and the position tables."""
    old = tmp_path / "old"
    old.mkdir()
    for name in ("config.json", "source.spm", "target.spm", "vocab.json"):
        (old / name).write_bytes((marian_dir / name).read_bytes())
    torch.save(MarianMTModel.from_pretrained(str(marian_dir)).state_dict(), old / "pytorch_model.bin")
    a, b = load_model(marian_dir)[0].state_dict(), load_model(old)[0].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------- conversion
def _assert_same_checkpoint(a_dir: Path, b_dir: Path) -> None:
    a_model, _, a_info = load_checkpoint(a_dir)
    b_model, _, b_info = load_checkpoint(b_dir)
    assert a_model.cfg == b_model.cfg
    a, b = a_model.state_dict(), b_model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (a_info.source_language, a_info.target_language, a_info.model_id) == (
        b_info.source_language,
        b_info.target_language,
        b_info.model_id,
    )


def test_marian_to_ferry_to_marian(marian_dir: Path, tmp_path: Path, sentences: list[str]) -> None:
    assert ferry_main(["convert", "--to", "ferry", str(marian_dir), str(tmp_path / "ferry")]) == 0
    assert detect_format(tmp_path / "ferry") == "ferry"
    a = Translator(marian_dir, device="cpu").translate_batch(sentences, beam_size=4, max_length=MAX_NEW)
    b = Translator(tmp_path / "ferry", device="cpu").translate_batch(sentences, beam_size=4, max_length=MAX_NEW)
    assert [r.text for r in a] == [r.text for r in b]
    assert ferry_main(["convert", "--to", "marian", str(tmp_path / "ferry"), str(tmp_path / "back")]) == 0
    from safetensors.torch import load_file

    original, back = (
        load_file(str(marian_dir / "model.safetensors")),
        load_file(str(tmp_path / "back/model.safetensors")),
    )
    assert original.keys() == back.keys()
    for k in original:
        assert torch.equal(original[k], back[k]), k
    assert json.loads((tmp_path / "back/vocab.json").read_text()) == json.loads((marian_dir / "vocab.json").read_text())


def _random_ferry(root: Path, spm_path: Path, cfg: TransformerConfig) -> Path:
    torch.manual_seed(1)
    model = Transformer(cfg)
    with torch.no_grad():
        for p in model.parameters():  # not the init: make every tensor (biases, norms) distinct
            p.add_(torch.randn_like(p) * 0.1)
    from ferry.model.checkpoint import CheckpointInfo

    info = CheckpointInfo(source_language="xx", target_language="yy", model_id="rnd", version="1")
    return save_checkpoint(root, model, info, source_spm=spm_path)


@pytest.mark.parametrize("variant", ["tiny", "pre-norm"])
def test_ferry_to_marian_to_ferry(
    tiny_checkpoint: Path, tmp_path: Path, variant: str, tiny_pairs: list[tuple[str, str]]
) -> None:
    """Export runs in transformers with ferry's tokens (GQA heads expanded, BOS start, pre-norm as
    Pegasus), and converting back restores every tensor and the config exactly."""
    src = tiny_checkpoint
    if variant == "pre-norm":
        base = load_checkpoint(tiny_checkpoint)[0].cfg
        cfg = TransformerConfig(
            **{**base.to_dict(), "norm_position": "pre", "final_logits_bias": True, "attention_bias": False}
        )
        src = _random_ferry(tmp_path / "rnd", tiny_checkpoint / "spm.model", cfg)
    hf_dir, back = tmp_path / "hf", tmp_path / "back"
    convert(src, hf_dir, to="marian")
    hf_config = json.loads((hf_dir / "config.json").read_text())
    assert hf_config["model_type"] == ("marian" if variant == "tiny" else "pegasus")
    convert(hf_dir, back, to="ferry")
    _assert_same_checkpoint(src, back)

    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    texts = [s for s, _ in tiny_pairs[:12]]
    translator = Translator(src, device="cpu")
    hf_tok = AutoTokenizer.from_pretrained(str(hf_dir))
    assert hf_tok(texts).input_ids == translator.tokenizer.encode_source(texts)
    hf = AutoModelForSeq2SeqLM.from_pretrained(str(hf_dir)).eval()
    cfg = translator.model.cfg
    for beam in (1, 4):
        with torch.no_grad():
            out = hf.generate(
                **hf_tok(texts, return_tensors="pt", padding=True),
                num_beams=beam,
                do_sample=False,
                max_new_tokens=MAX_NEW,
                forced_eos_token_id=None,
                bad_words_ids=[[i] for i in translator.banned_ids() if i != cfg.eos_id],
            )
        expected = [_strip(r.tolist()[1:], cfg.eos_id, cfg.pad_id) for r in out]
        assert _ferry_ids(translator, texts, beam) == expected
    if variant == "tiny":  # the trained model still translates its data through HF
        assert hf_tok.batch_decode(expected, skip_special_tokens=True) == [t for _, t in tiny_pairs[:12]]


def test_convert_refuses_bad_targets(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown conversion target"):
        convert(tiny_checkpoint, tmp_path / "x", to="onnx")
    with pytest.raises(ValueError, match="must differ"):
        convert(tiny_checkpoint, tiny_checkpoint, to="ferry")
    assert ferry_main(["convert", "--to", "marian", str(tmp_path / "missing"), str(tmp_path / "y")]) == 2


# ---------------------------------------------------------------------------------------------- int8, CT2
def test_int8_translates(tiny_checkpoint: Path, tiny_pairs: list[tuple[str, str]]) -> None:
    translator = Translator(tiny_checkpoint, device="cpu", dtype="int8")
    assert translator.quantized
    int8_linears = (torch.ao.nn.quantized.dynamic.Linear, NativeInt8Linear)  # torch's or model/qgemm.c
    assert isinstance(translator.model.output, int8_linears)
    texts = [s for s, _ in tiny_pairs]
    got = [r.text for r in translator.translate_batch(texts, beam_size=4)]
    correct = sum(g == t for g, (_, t) in zip(got, tiny_pairs))
    assert correct >= math.ceil(0.9 * len(tiny_pairs))


def test_int8_needs_cpu(tiny_checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="int8"):
        resolve_dtype("int8", torch.device("cuda"))
    with pytest.raises(ValueError, match="allowed"):
        Translator(tiny_checkpoint, device="cpu", dtype="int4")


def test_ctranslate2_same_greedy_tokens(
    tiny_checkpoint: Path, tmp_path: Path, tiny_pairs: list[tuple[str, str]]
) -> None:
    """A ferry model (decoder starts from <s>) converted through CTranslate2's converter decodes the same."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    assert ferry_main(["convert", "--to", "ctranslate2", str(tiny_checkpoint), str(tmp_path / "ct2")]) == 0
    translator = Translator(tiny_checkpoint, device="cpu")
    texts = [s for s, _ in tiny_pairs[:12]]
    rows = translator.tokenizer.encode_source(texts)
    pieces = [[translator.tokenizer.source.id_to_piece(i) for i in r] for r in rows]
    ct2 = ctranslate2.Translator(str(tmp_path / "ct2"), device="cpu")
    out = ct2.translate_batch(pieces, beam_size=1, max_decoding_length=MAX_NEW, min_decoding_length=0)
    got = [[translator.tokenizer.source.piece_to_id(p) for p in r.hypotheses[0]] for r in out]
    assert got == _ferry_ids(translator, texts, 1)


def test_languages_from_directory_name(marian_dir: Path, tmp_path: Path) -> None:
    """Without tokenizer_config.json the OPUS-MT naming scheme still tells the language pair."""
    named = tmp_path / "opus-mt-en-de"
    named.mkdir()
    for name in ("config.json", "model.safetensors", "source.spm", "target.spm", "vocab.json"):
        (named / name).write_bytes((marian_dir / name).read_bytes())
    info = read_marian_dir(named).info
    assert (info.source_language, info.target_language, info.model_id) == ("en", "de", "opus-mt-en-de")


def test_translate_cli_accepts_marian_dir(marian_dir: Path, tmp_path: Path, sentences: list[str]) -> None:
    (tmp_path / "in.txt").write_text("\n".join(sentences[:4]) + "\n")
    args = ["translate", "--model", str(marian_dir), "--device", "cpu", "--beam-size", "2"]
    assert ferry_main([*args, "-i", str(tmp_path / "in.txt"), "-o", str(tmp_path / "out.txt")]) == 0
    expected = Translator(marian_dir, device="cpu").translate_batch(sentences[:4], beam_size=2)
    assert (tmp_path / "out.txt").read_text().splitlines() == [r.text for r in expected]


def test_ctranslate2_marian_same_greedy_tokens(marian_dir: Path, tmp_path: Path, sentences: list[str]) -> None:
    """A (fine-tuned) Marian model whose <pad> start embedding is not zero converts exactly too."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    assert ferry_main(["convert", "--to", "ctranslate2", str(marian_dir), str(tmp_path / "ct2")]) == 0
    translator = Translator(marian_dir, device="cpu")
    vocab = translator.tokenizer.vocab
    assert vocab is not None
    pieces = {i: p for p, i in vocab.items()}
    rows = translator.tokenizer.encode_source(sentences)
    ct2 = ctranslate2.Translator(str(tmp_path / "ct2"), device="cpu")
    out = ct2.translate_batch(
        [[pieces[i] for i in r] for r in rows], beam_size=1, max_decoding_length=MAX_NEW, min_decoding_length=0
    )
    got = [[vocab[p] for p in r.hypotheses[0]] for r in out]
    assert got == _ferry_ids(translator, sentences, 1)
