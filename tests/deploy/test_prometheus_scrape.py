"""A real Prometheus scrapes a live ``moerec serve``: the metric names the dashboards, alerts
and autoscaler rely on are the ones the service exports.

Prometheus is Debian's ``prometheus`` binary (or ``$MOEREC_TEST_PROMETHEUS``) on a free
loopback port, scraping every second, with this repository's recording rules loaded. A
missing binary skips the test on a developer's machine and fails it when ``CI`` is set.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.dependencies import DependencyUnavailable, PrivateServer, poll_until, started
from tests.serving.conftest import LiveService, live_service

PROMETHEUS_ENV = "MOEREC_TEST_PROMETHEUS"  # the prometheus executable
RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "rules"
RECORDING_RULES = RULES / "moerec-recording.yml"
RECOMMENDATIONS_ROUTE = "/v1/users/{user_id}/recommendations"
DEADLINE_SECONDS = 60.0


class PrivatePrometheus(PrivateServer):
    """Prometheus scraping one target every second, its data in ``storage``."""

    what = "Prometheus"

    def __init__(self, target: str, storage: Path, *, startup_timeout: float = 60.0) -> None:
        super().__init__(startup_timeout=startup_timeout)
        self.target = target
        self.storage = storage
        self.binary: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        assert self.root is not None
        return self.root / "prometheus.yml"

    def _prepare(self) -> None:
        found = os.environ.get(PROMETHEUS_ENV) or shutil.which("prometheus")
        if not found or not Path(found).is_file():
            raise DependencyUnavailable(
                "prometheus not found on PATH; install it (apt-get install prometheus) or set "
                f"{PROMETHEUS_ENV} to the executable"
            )
        self.binary = Path(found)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RECORDING_RULES)],
            "scrape_configs": [
                {
                    "job_name": "moerec",
                    "scrape_interval": "1s",
                    "scrape_timeout": "1s",
                    "static_configs": [{"targets": [self.target], "labels": {"namespace": "test"}}],
                }
            ],
        }
        self.config_path.write_text(yaml.safe_dump(config))

    def _command(self) -> list[str]:
        assert self.binary is not None
        return [
            str(self.binary),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.storage}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]

    def _ping(self) -> bool:
        return httpx.get(f"{self.url}/-/ready", timeout=2.0).status_code == 200

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector ``promql`` evaluates to now (Prometheus's HTTP API)."""
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5.0)
        response.raise_for_status()
        body = response.json()
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def wait_for(self, promql: str) -> list[dict[str, Any]]:
        """The non-empty result of ``promql``, polled until the deadline."""
        return poll_until(
            lambda: self.query(promql),
            DEADLINE_SECONDS,
            lambda: f"{promql!r} to return series (last: {self.query(promql)})",
            interval=0.5,
        )


@pytest.fixture(scope="module")
def service(request, tmp_path_factory, trained, tiny_dataset) -> Iterator[LiveService]:
    yield from live_service(
        "embedded", tmp_path_factory.mktemp("scraped"), request, trained, tiny_dataset
    )


@pytest.fixture
def prometheus(service: LiveService, tmp_path: Path) -> Iterator[PrivatePrometheus]:
    target = service.url.removeprefix("http://")
    with started(PrivatePrometheus(target, tmp_path / "tsdb")) as server:
        server.wait_for('up{job="moerec"} == 1')  # one scrape before the traffic
        yield server


def recommend(service: LiveService, users: list[str]) -> None:
    for user in users:
        with service.client(user) as http:
            response = http.get(f"/v1/users/{user}/recommendations", params={"k": 5})
            assert response.status_code == 200, response.text


def test_prometheus_scrapes_requests_and_expert_activations(prometheus, service, tiny_dataset):
    users = [str(user) for user in tiny_dataset.vocab.user_ids[:10]]
    recommend(service, users[:5])

    ok = f'moerec_http_requests_total{{route="{RECOMMENDATIONS_ROUTE}",status="200"}}'
    requests = prometheus.wait_for(f"{ok} >= 5")
    assert requests[0]["metric"]["method"] == "GET"
    assert requests[0]["metric"]["namespace"] == "test"

    activations = prometheus.wait_for("moerec_expert_activations_total > 0")
    model = service.services.models.current.predictor.artefact.config.model
    layers = {series["metric"]["layer"] for series in activations}
    experts = {int(series["metric"]["expert"]) for series in activations}
    assert layers == {str(layer) for layer in range(model.num_layers)}
    assert experts <= set(range(model.moe_num_experts))

    # A series is born with its first value, which a rate does not count: only traffic after
    # Prometheus has seen the counters makes the recording rules' rates positive.
    recommend(service, users[5:])
    prometheus.wait_for(f"{ok} >= 10")
    prometheus.wait_for('namespace:moerec_http_requests:rate5m{namespace="test"} > 0')
    prometheus.wait_for('namespace_layer:moerec_expert_load:max_over_mean{namespace="test"} >= 1')
    prometheus.wait_for('moerec_model_info{namespace="test"} == 1')
