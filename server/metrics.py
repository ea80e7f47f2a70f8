"""Prometheus metrics of the server and its engines, served over HTTP (``--metrics-port``).

Per request: ``ferry_requests_total{method,code}`` (every finished call under its final status,
including refused, unauthenticated and undecodable ones), ``ferry_request_latency_seconds{method}`` and
``ferry_texts_total{model}``; per TranslateStream batch: ``ferry_stream_batches_total{code}``; request
bodies that are not valid messages: ``ferry_undecodable_messages_total{method}``.

Per engine step (``Engine.on_step``): ``ferry_batch_rows{model}`` and
``ferry_batch_tokens{model}`` histograms. Read from ``Engine.stats()`` at scrape time: queue depth,
running rows/sequences, in-flight requests, decoder cache bytes, step and token counters, and
``ferry_output_tokens_per_second{model}`` (delivered target tokens per second since the previous scrape).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .engine import StepEvent
from .registry import ServedModel

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKEN_BUCKETS = (64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class EngineCollector(Collector):
    """Engine gauges and counters, read from ``Engine.stats()`` when scraped."""

    def __init__(self, models: Iterable[ServedModel]) -> None:
        self.models = list(models)
        self._last: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        gauges = {
            "queue_sentences": GaugeMetricFamily(
                "ferry_queue_sentences", "Sentences waiting to join the batch", labels=["model"]
            ),
            "active_rows": GaugeMetricFamily(
                "ferry_active_rows", "Decoder rows in the running batch", labels=["model"]
            ),
            "active_sequences": GaugeMetricFamily(
                "ferry_active_sequences", "Sentences in the running batch", labels=["model"]
            ),
            "inflight_requests": GaugeMetricFamily(
                "ferry_inflight_requests", "Accepted, unfinished requests", labels=["model"]
            ),
            "cache_bytes": GaugeMetricFamily("ferry_cache_bytes", "Bytes held by decoder K/V caches", labels=["model"]),
        }
        counters = {
            "step_count": CounterMetricFamily("ferry_engine_steps", "Decode steps run", labels=["model"]),
            "generated_tokens": CounterMetricFamily(
                "ferry_generated_tokens", "Decoder positions computed (beams count each)", labels=["model"]
            ),
            "output_tokens": CounterMetricFamily(
                "ferry_output_tokens", "Target tokens of delivered translations", labels=["model"]
            ),
        }
        rate = GaugeMetricFamily(
            "ferry_output_tokens_per_second",
            "Delivered target tokens per second since the previous scrape",
            labels=["model"],
        )
        now = time.monotonic()
        for m in self.models:
            stats = m.engine.stats()
            for name, gauge in gauges.items():
                gauge.add_metric([m.model_id], float(getattr(stats, name)))
            for name, counter in counters.items():
                counter.add_metric([m.model_id], float(getattr(stats, name)))
            with self._lock:
                then, tokens = self._last.get(m.model_id, (now, stats.output_tokens))
                self._last[m.model_id] = (now, stats.output_tokens)
            rate.add_metric([m.model_id], (stats.output_tokens - tokens) / (now - then) if now > then else 0.0)
        yield from gauges.values()
        yield from counters.values()
        yield rate


class Metrics:
    """All of the server's metrics in their own registry (several servers may share a process)."""

    def __init__(self, models: Iterable[ServedModel] = ()) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ferry_requests", "RPCs answered, by method and status code", ["method", "code"], registry=self.registry
        )
        self.latency = Histogram(
            "ferry_request_latency_seconds", "RPC latency", ["method"], buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.texts = Counter("ferry_texts", "Texts translated", ["model"], registry=self.registry)
        self.stream_batches = Counter(
            "ferry_stream_batches", "TranslateStream batches answered, by status code", ["code"], registry=self.registry
        )
        self.undecodable = Counter(
            "ferry_undecodable_messages",
            "Request messages that were not valid protobuf, by method",
            ["method"],
            registry=self.registry,
        )
        self.step_rows = Histogram(
            "ferry_batch_rows", "Decoder rows per engine step", ["model"], buckets=ROW_BUCKETS, registry=self.registry
        )
        self.step_tokens = Histogram(
            "ferry_batch_tokens",
            "Attention positions (source + target) per engine step",
            ["model"],
            buckets=TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.models = list(models)
        self.registry.register(EngineCollector(self.models))
        for m in self.models:
            m.engine.on_step = self._step_hook(m.model_id)
        self._http: WSGIServer | None = None

    def _step_hook(self, model_id: str) -> _StepHook:
        return _StepHook(self.step_rows.labels(model_id), self.step_tokens.labels(model_id))

    def observe(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` over HTTP on a daemon thread; returns the bound port (0 picks one)."""
        self._http, _ = start_http_server(port, host, registry=self.registry)
        return int(self._http.server_address[1])

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class _StepHook:
    """``Engine.on_step``: record the step's rows and tokens (runs on the engine thread)."""

    def __init__(self, rows: Histogram, tokens: Histogram) -> None:
        self.rows = rows
        self.tokens = tokens

    def __call__(self, event: StepEvent) -> None:
        self.rows.observe(event.rows)
        self.tokens.observe(event.tokens)
