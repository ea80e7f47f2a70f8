"""The model runner: owns the decoder caches and searchers of the running batch and runs decode steps.

Sentences are grouped into *lanes*, one per distinct search setting (``LaneKey``: beam size, length
penalty, n-best, retry group). A lane is one ``GreedySearcher``/``BeamSearcher`` over a dynamic set of
sequences plus one ``DecoderCache`` whose rows follow the searcher's rows, exactly the protocol of
``ferry.model.search.run_search``, except that sequences join (``admit``) and leave (``remove``) between
steps. Every row is computed independently of the others, so joining a batch never changes a result.

The runner is used by the engine's worker thread only: no locks, no futures, no asyncio. Failures are
returned, not raised: a lane whose encode or step raises is discarded (its sentences restart from
scratch when retried) and the other lanes go on.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from ferry.model.backend import Backend
from ferry.model.cache import DecoderCache
from ferry.model.search import Hypothesis, Searcher, apply_step

from .requests import LaneKey, Sentence
from .scheduler import Usage

log = logging.getLogger("ferry.server.engine")


@dataclass
class Finished:
    sentence: Sentence
    hypotheses: list[Hypothesis]
    """n-best list, best first."""


@dataclass
class Failure:
    sentences: list[Sentence]
    """Everything the failed operation touched; none of them is in the runner any more."""
    error: BaseException
    stage: str
    """``encode``, ``join``, ``step`` or ``select``."""


@dataclass
class StepReport:
    finished: list[Finished] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    rows: int = 0
    """Decoder rows that ran this step (all lanes)."""
    tokens: int = 0
    """Attention positions those rows read: source tokens + target positions so far, summed over rows."""
    sequences: int = 0
    lanes: int = 0
    request_ids: frozenset[int] = frozenset()
    """Requests that had rows in this step."""


class Lane:
    """One searcher and its decoder cache; ``sentences`` maps the searcher's seq ids to sentences."""

    def __init__(self, key: LaneKey, searcher: Searcher) -> None:
        self.key = key
        self.searcher = searcher
        self.cache: DecoderCache | None = None
        self.sentences: dict[Hashable, Sentence] = {}

    @property
    def rows(self) -> int:
        return self.searcher.num_rows


class ModelRunner:
    def __init__(self, backend: Backend, *, max_rows: int | None = None) -> None:
        self.backend = backend
        self.max_rows = max_rows
        """The batch row limit: no lane's cache grows past it (see ``DecoderCache.max_rows``)."""
        self.lanes: dict[LaneKey, Lane] = {}

    # ------------------------------------------------------------------ views
    def sentences(self) -> list[Sentence]:
        return [s for lane in self.lanes.values() for s in lane.sentences.values()]

    def usage(self) -> Usage:
        return Usage.of(self.sentences())

    @property
    def empty(self) -> bool:
        return not self.lanes

    def cache_bytes(self) -> int:
        return sum(lane.cache.size_bytes() for lane in self.lanes.values() if lane.cache is not None)

    # ------------------------------------------------------------------ joining
    def admit(self, sentences: Sequence[Sentence]) -> list[Failure]:
        """Encode newcomers (one encoder batch per lane), append their cache rows and add them to
        their lane's searcher, behind the rows already running."""
        groups: dict[LaneKey, list[Sentence]] = {}
        for s in sentences:
            groups.setdefault(s.lane, []).append(s)
        failures: list[Failure] = []
        for key, group in groups.items():
            lane = self.lanes.get(key) or self._new_lane(key)
            try:
                new_cache = self.backend.encode([s.ids for s in group], copies=lane.searcher.rows_per_seq)
            except Exception as e:  # isolate the failure to these sentences
                failures.append(self._failed(group, e, "encode"))
                if not lane.sentences:
                    self.lanes.pop(key, None)
                continue
            try:
                if lane.cache is None:
                    new_cache.max_rows = self.max_rows
                    new_cache.max_positions = self.backend.max_positions
                    lane.cache = new_cache
                else:
                    lane.cache.extend(new_cache)
            except Exception as e:  # the lane's cache may be half-joined: restart the lane
                failures.append(self._failed([*lane.sentences.values(), *group], e, "join"))
                self.lanes.pop(key, None)
                continue
            for s in group:
                lane.searcher.add(s.seq_id, s.limit)
                lane.sentences[s.seq_id] = s
            self.lanes[key] = lane
        return failures

    def _new_lane(self, key: LaneKey) -> Lane:
        searcher = self.backend.new_searcher(
            key.beam_size, length_penalty=key.length_penalty, n_best=key.num_hypotheses
        )
        return Lane(key, searcher)

    # ------------------------------------------------------------------ leaving
    def remove(self, sentences: Iterable[Sentence]) -> list[Failure]:
        """Drop sentences (cancelled, expired): their rows leave every cache now."""
        by_lane: dict[LaneKey, set[Hashable]] = {}
        for s in sentences:
            by_lane.setdefault(s.lane, set()).add(s.seq_id)
        failures: list[Failure] = []
        for key, seq_ids in by_lane.items():
            lane = self.lanes.get(key)
            if lane is None:
                continue
            seq_ids &= lane.sentences.keys()
            if not seq_ids:
                continue
            keep = lane.searcher.remove(set(seq_ids))
            for sid in seq_ids:
                del lane.sentences[sid]
            if not lane.sentences:
                del self.lanes[key]
                continue
            assert lane.cache is not None
            try:
                lane.cache.select_rows(keep)
            except Exception as e:
                failures.append(self._failed(list(lane.sentences.values()), e, "select"))
                del self.lanes[key]
        return failures

    def clear(self) -> list[Sentence]:
        """Drop everything (shutdown, internal error); returns what was running."""
        out = self.sentences()
        self.lanes.clear()
        return out

    # ------------------------------------------------------------------ stepping
    def step(self) -> StepReport:
        """One decode step of every lane. Finished sentences leave at once (their rows are freed)."""
        report = StepReport(lanes=len(self.lanes))
        request_ids: set[int] = set()
        for key, lane in list(self.lanes.items()):
            cache = lane.cache
            assert cache is not None
            report.rows += cache.num_rows
            report.tokens += sum(cache.src_lengths_host) + sum(cache.lengths_host) + cache.num_rows
            report.sequences += len(lane.sentences)
            request_ids.update(s.request.id for s in lane.sentences.values())
            try:
                logits = self.backend.decode_step(lane.searcher.next_tokens, cache)  # (R, V)
                out = lane.searcher.step(logits)
            except Exception as e:  # isolate: only this lane's sentences are affected
                report.failures.append(self._failed(list(lane.sentences.values()), e, "step"))
                del self.lanes[key]
                continue
            for seq_id, hyps in out.finished:
                report.finished.append(Finished(lane.sentences.pop(seq_id), hyps))
            if not lane.sentences:
                del self.lanes[key]
                continue
            try:
                apply_step(out, cache)
            except Exception as e:
                report.failures.append(self._failed(list(lane.sentences.values()), e, "select"))
                del self.lanes[key]
        report.request_ids = frozenset(request_ids)
        return report

    def _failed(self, sentences: list[Sentence], error: BaseException, stage: str) -> Failure:
        log.warning(
            "model %s failed for %d sentences: %s: %s",
            stage,
            len(sentences),
            type(error).__name__,
            error,
            extra={"stage": stage, "sentences": len(sentences)},
        )
        if isinstance(error, torch.OutOfMemoryError) and self.backend.device.type == "cuda":
            torch.cuda.empty_cache()
        return Failure(sentences, error, stage)
