"""ServiceMetrics: the remembered series are the registry's own, so what they count is what
/metrics exposes."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from moerec.inference import ExpertUse
from moerec.serving.metrics import ServiceMetrics


def samples(metrics: ServiceMetrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = metrics.render().decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_a_remembered_series_counts_into_the_exposition():
    metrics = ServiceMetrics()
    first = metrics.series(metrics.cache, "hit")
    assert metrics.series(metrics.cache, "hit") is first
    for _ in range(3):
        metrics.series(metrics.cache, "hit").inc()
    metrics.series(metrics.cache, "miss").inc()
    counted = samples(metrics, "moerec_cache_requests_total")
    assert counted[(("result", "hit"),)] == 3
    assert counted[(("result", "miss"),)] == 1


def test_expert_activations_count_per_layer_and_expert():
    metrics = ServiceMetrics()
    use = ExpertUse(layer=1, experts=[0, 3], weights=[0.75, 0.25])
    metrics.observe_routing([use, use])
    metrics.observe_routing([ExpertUse(layer=2, experts=[3], weights=[1.0])])
    counted = samples(metrics, "moerec_expert_activations_total")
    assert counted[(("expert", "0"), ("layer", "1"))] == 2
    assert counted[(("expert", "3"), ("layer", "1"))] == 2
    assert counted[(("expert", "3"), ("layer", "2"))] == 1
