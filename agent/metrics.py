"""Prometheus metrics of one agent (its own registry, so several agents can share a
process in tests). ``GET /metrics`` serves ``render()``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS_MS = (5, 10, 25, 50, 100, 200, 350, 500, 750, 1000, 2000, 5000, 10000)
FIT_BUCKETS_MS = (100, 500, 1000, 5000, 10000, 30000, 60000, 120000, 300000, 600000)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.commands = Counter(
            "bdi_commands",
            "Commands handled",
            ["command", "source", "outcome"],
            registry=self.registry,
        )
        self.infer_ms = Histogram(
            "bdi_infer_latency_ms",
            "Infer latency, queue included (ms)",
            buckets=LATENCY_BUCKETS_MS,
            registry=self.registry,
        )
        self.fit_ms = Histogram(
            "bdi_fit_latency_ms",
            "fit_ok latency (ms)",
            buckets=FIT_BUCKETS_MS,
            registry=self.registry,
        )
        self.queue_size = Gauge("bdi_queue_size", "Commands waiting", registry=self.registry)
        self.mqtt_connected = Gauge(
            "bdi_mqtt_connected", "1 when connected to the broker", registry=self.registry
        )
        self.spool_bytes = Gauge(
            "bdi_spool_bytes", "Replies waiting on disk for the broker", registry=self.registry
        )
        self.mqtt_rejected = Counter(
            "bdi_mqtt_rejected_messages",
            "Messages no broker would take since start (bad topic or unreadable spool file):"
            " dropped, or moved to the spool's rejected/ folder",
            registry=self.registry,
        )
        self.anomalies = Counter(
            "bdi_anomalies",
            "Anomalous verdicts",
            ["recipe_id", "role_id", "roi_id"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
