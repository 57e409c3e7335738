"""The endpoint's Prometheus series, exported through Ray's metrics agent."""

from ray.serve import metrics

LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
BATCH_SIZE_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64]


class ServeMetrics:
    """Prometheus series through Ray's metrics agent; Serve adds deployment, replica and app tags."""

    def __init__(self) -> None:
        self.requests = metrics.Counter(
            "pneumo_requests", "requests by endpoint and HTTP status", tag_keys=("endpoint", "status")
        )
        self.errors = metrics.Counter(
            "pneumo_request_errors", "4xx and 5xx answers by endpoint and status", tag_keys=("endpoint", "status")
        )
        self.latency_ms = metrics.Histogram(
            "pneumo_request_latency_ms",
            "time in the replica per request, ms",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=("endpoint",),
        )
        self.batch_size = metrics.Histogram(
            "pneumo_batch_size", "images per model call", boundaries=BATCH_SIZE_BOUNDARIES
        )

    def record(self, endpoint: str, status: int, seconds: float) -> None:
        tags = {"endpoint": endpoint, "status": str(status)}
        self.requests.inc(tags=tags)
        if status >= 400:
            self.errors.inc(tags=tags)
        self.latency_ms.observe(1000 * seconds, tags={"endpoint": endpoint})
