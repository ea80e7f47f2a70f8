"""The native attention kernel (model/attend.c via model/native.py) against torch's
``scaled_dot_product_attention``, and how the library is found, built and turned off."""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from ferry.model import native

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler to build model/attend.c")


@pytest.fixture(autouse=True)
def _fresh_library() -> Iterator[None]:
    native.library.cache_clear()
    yield
    native.library.cache_clear()


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor, group: int) -> torch.Tensor:
    """SDPA with a padding mask, K/V rows repeated per group: (R, H D)."""
    rows, hd = q.shape
    kv_heads, width, d = k.shape[1:]
    heads = hd // d
    k = k.repeat_interleave(group, 0)
    v = v.repeat_interleave(group, 0)
    blocked = torch.arange(width)[None, :] >= lengths[:, None]  # (R, T)
    mask = torch.zeros(rows, 1, 1, width).masked_fill_(blocked[:, None, None, :], float("-inf"))
    out = F.scaled_dot_product_attention(
        q.view(rows, heads, 1, d), k, v, attn_mask=mask, enable_gqa=heads != kv_heads
    )  # (R, H, 1, D)
    return out.reshape(rows, hd)


SHAPES = [(8, 8, 32, 1), (4, 2, 64, 1), (2, 2, 24, 3), (4, 1, 16, 2)]
"""(heads, kv_heads, head_dim, group): the unrolled head sizes, another one, grouped-query, beam groups."""


@pytest.mark.parametrize(("heads", "kv_heads", "d", "group"), SHAPES)
def test_attention_matches_sdpa(heads: int, kv_heads: int, d: int, group: int) -> None:
    torch.manual_seed(0)
    rows, width = 6, 9
    attend = native.attention(heads, kv_heads, d)
    assert attend is not None
    # K/V as strided views of a bigger buffer, as the decoder cache hands them over
    base = torch.randn(rows // group, 3, 2, kv_heads, width + 4, d)
    k, v = base[:, 1, 0], base[:, 1, 1]  # (N, Hkv, T_cap, D)
    q = torch.randn(rows, 3 * heads * d)[:, : heads * d]  # row stride wider than the query
    lengths = torch.tensor([9, 1, 4, 7, 2, 9])
    got = attend(q, k, v, lengths, group=group)
    want = _reference(q, k[:, :, :width], v[:, :, :width], lengths, group)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_attention_stores_the_new_positions_first() -> None:
    torch.manual_seed(1)
    heads, d, rows = 2, 8, 3
    attend = native.attention(heads, heads, d)
    assert attend is not None
    k, v = torch.randn(rows, heads, 6, d), torch.randn(rows, heads, 6, d)
    before_k, before_v = k.clone(), v.clone()
    qkv = torch.randn(rows, 3 * heads * d)
    lengths = torch.tensor([0, 3, 5])  # each row writes at its own position, then attends to it too
    new_k, new_v = qkv[:, heads * d : 2 * heads * d], qkv[:, 2 * heads * d :]
    got = attend(qkv, k, v, lengths, extra=1, new_k=new_k, new_v=new_v)
    for r, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(k[r, :, n], new_k[r].view(heads, d), rtol=0, atol=0)
        torch.testing.assert_close(v[r, :, n], new_v[r].view(heads, d), rtol=0, atol=0)
        untouched = [t for t in range(6) if t != n]
        assert torch.equal(k[r, :, untouched], before_k[r, :, untouched])
        assert torch.equal(v[r, :, untouched], before_v[r, :, untouched])
    torch.testing.assert_close(got, _reference(qkv[:, : heads * d], k, v, lengths + 1, 1), rtol=1e-5, atol=1e-6)


def test_a_row_without_positions_gets_zeros() -> None:
    attend = native.attention(2, 2, 4)
    assert attend is not None
    k = v = torch.randn(2, 2, 3, 4)
    out = attend(torch.randn(2, 8), k, v, torch.tensor([0, 3]))
    assert torch.equal(out[0], torch.zeros(8))


def test_rejects_what_it_cannot_read() -> None:
    attend = native.attention(2, 2, 4)
    assert attend is not None
    k = torch.randn(2, 2, 3, 4)
    with pytest.raises(ValueError, match="float32"):
        attend(torch.randn(2, 8), k.double(), k.double(), torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="contiguous"):
        attend(torch.randn(2, 8), k.transpose(2, 3), k.transpose(2, 3), torch.tensor([1, 1]))


def test_library_builds_into_the_cache_dir_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(native, "__file__", str(tmp_path / "elsewhere" / "native.py"))  # no prebuilt copy
    assert native.library() is not None
    built = tmp_path / native.library_name()
    assert built.exists()
    assert built.stat().st_mode & 0o444 == 0o444  # readable by every user (a prebuilt copy in an image)
    stamp = built.stat().st_mtime_ns
    native.library.cache_clear()
    assert native.library() is not None
    assert built.stat().st_mtime_ns == stamp  # found, not rebuilt
    assert not list(tmp_path.glob(".build-*"))  # no temporary files left behind


def test_without_a_compiler_it_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(native, "__file__", str(tmp_path / "elsewhere" / "native.py"))
    assert native.library() is None
    assert native.attention(8, 8, 32) is None


def test_a_read_only_cache_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv(native.CACHE_ENV, str(blocker / "cache"))
    monkeypatch.setattr(native, "__file__", str(tmp_path / "elsewhere" / "native.py"))
    assert native.library() is None


def test_turned_off_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native.NATIVE_ENV, "0")
    assert native.library() is None


def test_compiler_errors_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "cc"
    fake.write_text("#!/bin/sh\necho 'attend.c:1: error: broken' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    with pytest.raises(RuntimeError, match="broken"):
        native.build(tmp_path / "out")
    assert not list((tmp_path / "out").glob("*"))


@pytest.mark.parametrize(
    ("rows", "vocab", "k", "banned"), [(5, 1000, 8, [0, 1, 3]), (3, 70, 1, [2]), (2, 5, 5, [0, 4])]
)
def test_top_log_probs_match_log_softmax_and_topk(rows: int, vocab: int, k: int, banned: list[int]) -> None:
    top = native.top_log_probs()
    assert top is not None
    gen = torch.Generator().manual_seed(vocab + k)
    logits = torch.randn(rows, vocab, generator=gen) * 4
    logits[0, banned[0]] = 50.0  # a banned id that would win: still counted in the normaliser only
    before = logits.clone()
    logp = torch.log_softmax(logits, dim=-1)
    logp[:, banned] = -math.inf
    want_scores, want_tokens = logp.topk(k, dim=1)
    scores, tokens = top(logits, k, torch.tensor(banned))
    assert torch.equal(logits, before)  # restored
    finite = want_scores > -math.inf
    torch.testing.assert_close(scores[finite], want_scores[finite], rtol=1e-5, atol=1e-5)
    assert torch.equal(tokens[finite], want_tokens[finite])
    # too few allowed tokens for k: banned ids fill the tail with -inf
    assert torch.equal(scores[~finite], want_scores[~finite])
    assert set(tokens[~finite].tolist()) <= set(banned)


def test_top_log_probs_rejects_bad_arguments() -> None:
    top = native.top_log_probs()
    assert top is not None
    with pytest.raises(ValueError, match="k=9"):
        top(torch.randn(2, 8), 9, torch.tensor([], dtype=torch.int64))
    with pytest.raises(ValueError, match="float32"):
        top(torch.randn(2, 8).double(), 2, torch.tensor([], dtype=torch.int64))
    with pytest.raises(ValueError, match="int64"):
        top(torch.randn(2, 8), 2, torch.tensor([1], dtype=torch.int32))
    logits = torch.randn(2, 8)
    before = logits.clone()
    with pytest.raises(ValueError, match="vocabulary"):
        top(logits, 2, torch.tensor([3, 8]))  # id 8 of 8 would be written past the row
    assert torch.equal(logits, before)


def test_attention_refuses_to_read_or_write_outside_the_cache() -> None:
    """A bad length or row-table entry must raise before any memory is touched (a wild read or write
    would take the whole server down, not just one request)."""
    attend = native.attention(2, 2, 4)
    assert attend is not None
    k, v = torch.randn(3, 2, 5, 4), torch.randn(3, 2, 5, 4)
    before = k.clone()
    q = torch.randn(3, 3 * 8)
    new_k, new_v = q[:, 8:16], q[:, 16:]
    with pytest.raises(ValueError, match="outside"):
        attend(q, k, v, torch.tensor([1, 5, 2]), extra=1, new_k=new_k, new_v=new_v)  # 6 positions > 5
    with pytest.raises(ValueError, match="outside"):
        attend(q, k, v, torch.tensor([1, -1, 2]))
    table = torch.zeros(3, 5, dtype=torch.int64)
    table[2, 1] = 7  # K/V row 7 of 3
    with pytest.raises(ValueError, match="outside"):
        attend(q, k, v, torch.tensor([2, 2, 2]), table=table)
    with pytest.raises(ValueError, match="outside"):
        attend(q, k[:1], v[:1], torch.tensor([1, 1, 1]), group=2)  # row 2 would read K/V row 1 of 1
    with pytest.raises(ValueError, match="2 lengths for 3 rows"):
        attend(q, k, v, torch.tensor([1, 1]))
    assert torch.equal(k, before)  # nothing was stored by the refused calls


@pytest.mark.parametrize("beam_size", [1, 4])
def test_translations_without_the_kernels_are_the_same(
    tiny_checkpoint: Path, tiny_pairs: list[tuple[str, str]], beam_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback a machine without a C compiler runs (torch attention, masked zeroed caches, torch
    top-k) translates as the native path does."""
    from ferry.model import Translator

    sources = [s for s, _ in tiny_pairs[:12]]
    fast = Translator(tiny_checkpoint, device="cpu")
    assert fast.encode(fast.tokenize(sources[:1])).indirect
    want = fast.translate_batch(sources, beam_size=beam_size, return_scores=True)
    monkeypatch.setenv(native.NATIVE_ENV, "0")
    native.library.cache_clear()
    plain = Translator(tiny_checkpoint, device="cpu")
    assert not plain.encode(plain.tokenize(sources[:1])).indirect
    got = plain.translate_batch(sources, beam_size=beam_size, return_scores=True)
    assert [r.text for r in got] == [r.text for r in want]
    for a, b in zip(got, want):
        assert a.score == pytest.approx(b.score, abs=1e-4)
