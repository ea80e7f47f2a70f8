"""Several engines over one model: ``EnginePool`` gives each CPU core its own decode loop.

One ``Engine`` runs its decode steps on one worker thread; with more torch threads the step's small
operations are split across cores, and on a CPU every one of those hundreds of parallel regions per
step wakes the other OpenMP threads (docs/benchmarks.md: ~36 % of the engine thread idle under load).
A pool of engines, each stepping its own batch on its own worker thread, keeps every core busy with
whole steps instead (CTranslate2's ``inter_threads``). The engines share the model's weights
(read-only) and nothing else: each has its own queue, scheduler, runner and caches, and a request is
routed to one engine, the one with the fewest sentences waiting or running (ties: the first).

The pool's ``threads`` are shared out before every step: an engine working alone uses all of them
(a single client gets the latency of one engine with every core), several busy engines an equal share
each (one each on a 2-core machine under load). torch keeps the intra-op thread count per calling
thread, so each worker sets its own.

It has the ``Engine`` interface the registry, the service and the metrics use (``submit``, ``stats``,
``on_step``, ``start``/``drain``/``stop``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import fields, replace

from ferry.model.backend import Backend
from ferry.model.options import DecodeOptions

from .config import EngineConfig
from .engine import Engine, EngineStats, StepEvent
from .requests import RequestHandle

__all__ = ["EnginePool"]


class EnginePool:
    """``engines`` engines over one ``Backend``; ``submit`` goes to the least busy one."""

    def __init__(
        self, backend: Backend, config: EngineConfig | None = None, *, engines: int = 1, threads: int = 0
    ) -> None:
        if isinstance(engines, bool) or not isinstance(engines, int) or engines < 1:
            raise ValueError(f"engines={engines!r} is invalid; it must be an integer >= 1")
        if engines > 1 and backend.device.type != "cpu":
            raise ValueError(
                f"engines={engines} needs a CPU model; on {backend.device.type} one engine owns the device "
                "(its CUDA graphs are not shared between threads): use engines=1"
            )
        self.backend = backend
        self.engines = [Engine(backend, config, name=f"ferry-engine-{i}") for i in range(engines)]
        self.config = self.engines[0].config
        self.max_input_tokens = self.engines[0].max_input_tokens
        self.threads = threads
        """torch threads the busy engines share (0: leave each worker's as torch set it)."""
        if threads and engines > 1:
            for engine in self.engines:
                engine.step_threads = self._threads_per_busy_engine
        self._on_step: Callable[[StepEvent], None] | None = None

    @property
    def on_step(self) -> Callable[[StepEvent], None] | None:
        """Called after every step of every engine, in that engine's worker thread."""
        return self._on_step

    @on_step.setter
    def on_step(self, hook: Callable[[StepEvent], None] | None) -> None:
        self._on_step = hook
        for engine in self.engines:
            engine.on_step = hook

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        for engine in self.engines:
            engine.start()

    def drain(self, timeout: float) -> bool:
        """``Engine.drain`` on every engine within one overall ``timeout``; True when all finished."""
        for engine in self.engines:  # stop admitting everywhere first
            engine.close()
        deadline = time.monotonic() + max(0.0, timeout)
        return all([engine.drain(max(0.0, deadline - time.monotonic())) for engine in self.engines])

    def stop(self) -> None:
        for engine in self.engines:  # stop admitting everywhere first
            engine.close()
        for engine in self.engines:
            engine.stop()

    def __enter__(self) -> EnginePool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return all(engine.running for engine in self.engines)

    # ------------------------------------------------------------------ callers
    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self.engines[0].count_tokens(texts)

    def submit(
        self,
        texts: Sequence[str],
        options: DecodeOptions | None = None,
        *,
        deadline: float | None = None,
    ) -> RequestHandle:
        """``Engine.submit`` on the engine with the fewest sentences queued or running (ties: the first,
        so that under light load one engine does the work, with all the threads)."""
        return self._pick().submit(texts, options, deadline=deadline)

    def _pick(self) -> Engine:
        return min(self.engines, key=lambda engine: engine.pending_sentences())

    def _threads_per_busy_engine(self) -> int:
        """All ``threads`` for an engine working alone; an equal share each while several work."""
        busy = sum(1 for engine in self.engines if engine.pending_sentences())
        return max(1, self.threads // max(1, busy))

    def stats(self) -> EngineStats:
        """The engines' statistics summed (``draining`` when any engine drains)."""
        snapshots = [engine.stats() for engine in self.engines]
        if len(snapshots) == 1:
            return snapshots[0]
        totals = {
            f.name: sum(getattr(s, f.name) for s in snapshots) for f in fields(EngineStats) if f.name != "draining"
        }
        return replace(snapshots[0], **totals, draining=any(s.draining for s in snapshots))
