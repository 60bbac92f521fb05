"""Prometheus metrics of one service process.

Each app owns its registry (no module globals), so several apps can live in one process (tests)
and ``/metrics`` shows exactly this service. Names follow Prometheus conventions: base units
(seconds), ``_total`` counters, low-cardinality labels (route templates, never raw paths or
user ids).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from moerec.inference import BatchReport, ExpertUse

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.029, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5,
    1.0, 2.5,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128)


class ServiceMetrics:
    """Every metric the service exports, registered on a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "moerec_http_requests_total",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "moerec_http_request_duration_seconds",
            "Time from request start to the last response byte.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "moerec_http_requests_in_flight", "Requests being served now.", registry=r
        )
        self.experts_per_request = Histogram(
            "moerec_experts_per_request",
            "Experts a recommendation used in a MoE layer (one observation per layer).",
            buckets=(1, 2, 3, 4, 5, 6, 8, 12, 16),
            registry=r,
        )
        self.expert_activations = Counter(
            "moerec_expert_activations_total",
            "Times each expert was chosen for a request's scoring position.",
            ["layer", "expert"],
            registry=r,
        )
        self.routing_entropy = Histogram(
            "moerec_routing_entropy_bits",
            "Entropy of a request's expert weights in a layer (0 = one expert decided).",
            buckets=(0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0),
            registry=r,
        )
        self.batch_size = Histogram(
            "moerec_batch_size",
            "Requests answered by one forward pass of the micro-batcher.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "moerec_batch_duration_seconds",
            "Time of one forward pass (all requests of a batch).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_wait = Histogram(
            "moerec_batch_wait_seconds",
            "How long the oldest request of a batch waited for companions.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.cache = Counter(
            "moerec_cache_requests_total",
            "Recommendation cache lookups by result (hit or miss).",
            ["result"],
            registry=r,
        )
        self.rate_limited = Counter(
            "moerec_rate_limited_total", "Requests refused with 429.", registry=r
        )
        self.auth_failures = Counter(
            "moerec_auth_failures_total",
            "Requests refused with 401 or 403, by error code.",
            ["code"],
            registry=r,
        )
        self.events = Counter(
            "moerec_events_total",
            "Feedback events by type and outcome (stored or duplicate).",
            ["event_type", "outcome"],
            registry=r,
        )
        self.fallbacks = Counter(
            "moerec_fallback_recommendations_total",
            "Recommendations served by the popularity fallback, by reason and A/B arm.",
            ["reason", "arm"],
            registry=r,
        )
        # One label, two values: the arm, never the user or the version (the version of
        # each arm is in moerec_model_info), so an experiment at most doubles the series.
        self.recommendation_seconds = Histogram(
            "moerec_recommendation_duration_seconds",
            "Time to answer a recommendation (history, cache, model or fallback), by A/B arm "
            "('control' without an experiment).",
            ["arm"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_info = Gauge(
            "moerec_model_info",
            "The model each A/B arm serves (value 1), with its version and variant as labels.",
            ["arm", "name", "version", "variant", "experts", "top_k"],
            registry=r,
        )
        self.model_loaded = Gauge(
            "moerec_model_loaded_timestamp_seconds",
            "When the control arm's model (the one promotions update) was loaded (Unix time).",
            registry=r,
        )
        self.circuit_state = Gauge(
            "moerec_circuit_state",
            "Circuit breaker state per dependency: 0 closed, 1 half-open, 2 open.",
            ["dependency"],
            registry=r,
        )
        self.degraded = Counter(
            "moerec_degraded_requests_total",
            "Requests answered in a degraded mode because a dependency failed.",
            ["dependency"],
            registry=r,
        )
        self.spool_pending = Gauge(
            "moerec_spool_pending_events",
            "Accepted events waiting in the local spool for the database.",
            registry=r,
        )
        self.model_reloads = Counter(
            "moerec_model_reloads_total", "Hot reloads by outcome.", ["outcome"], registry=r
        )
        self._model_labels: dict[str, tuple[str, ...]] = {}
        self._series: dict[tuple[object, tuple[str, ...]], Any] = {}

    def series(self, metric: Counter | Histogram, *labels: str) -> Any:
        """``metric.labels(*labels)``, remembered. prometheus_client's lookup takes a lock and
        re-validates the labels on every call, a visible share of a request's CPU on the hot
        path. Only for series that are never removed (``model_info``'s are)."""
        key = (metric, labels)
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = metric.labels(*labels)
        return found

    def observe_batch(self, report: BatchReport) -> None:
        self.batch_size.observe(report.size)
        self.batch_seconds.observe(report.seconds)
        self.batch_wait.observe(report.oldest_wait_seconds)

    def observe_routing(self, experts: Sequence[ExpertUse]) -> None:
        for use in experts:
            self.experts_per_request.observe(len(use.experts))
            self.routing_entropy.observe(_entropy_bits(use.weights))
            layer = str(use.layer)
            for expert in use.experts:
                self.series(self.expert_activations, layer, str(expert)).inc()

    def set_model(
        self, arm: str, name: str, version: str, variant: str, experts: int, top_k: int
    ) -> None:
        """Record what ``arm`` serves now, replacing only that arm's previous series."""
        labels = (arm, name, version, variant, str(experts), str(top_k))
        previous = self._model_labels.get(arm)
        if previous is not None and previous != labels:
            self.model_info.remove(*previous)
        self._model_labels[arm] = labels
        self.model_info.labels(*labels).set(1)
        if arm == "control":
            self.model_loaded.set_to_current_time()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _entropy_bits(weights: Sequence[float]) -> float:
    total = sum(weights)
    if total <= 0:
        return 0.0
    return -sum((w / total) * math.log2(w / total) for w in weights if w > 0)
