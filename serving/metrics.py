"""Prometheus metrics of one service instance (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServiceMetrics:
    """Latency per stage and variant, queue depths, shadow drops, errors."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request = Histogram("siftrank_request_seconds", "Search latency seen by the client, per variant and role",
                                 ["variant", "role"], buckets=BUCKETS, registry=self.registry)
        self.stage = Histogram("siftrank_stage_seconds", "Pipeline stage latency per variant (per batch)",
                               ["variant", "stage"], buckets=BUCKETS, registry=self.registry)
        self.batch = Histogram("siftrank_batch_size", "Queries answered by one micro-batch", ["variant"],
                               buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.queue = Gauge("siftrank_queue_depth", "Items waiting in a queue", ["queue"], registry=self.registry)
        self.shadow_drops = Counter("siftrank_shadow_dropped_total", "Shadow jobs not completed",
                                    ["variant", "reason"], registry=self.registry)
        self.errors = Counter("siftrank_errors_total", "Requests answered with an error, by HTTP status", ["status"],
                              registry=self.registry)
        self.cut = Counter("siftrank_threshold_cut_total", "Candidates removed by the relevance threshold",
                           ["variant"], registry=self.registry)
        self.documents = Counter("siftrank_documents_written_total", "Documents upserted or deleted through the API",
                                 ["op"], registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
