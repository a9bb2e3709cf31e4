"""``WorkerMetrics``: one daemon's Prometheus figures, in a registry of its own (never the global one), so
that several daemons in one process (tests, the end-to-end harness) keep separate counts."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# The ends of a task on this worker (runner.TaskResult's values).
RESULTS = ("completed", "failed", "cancelled", "lost", "released")
ROUND_TRIP_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
UPLOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)


class WorkerMetrics:
    """Counters and histograms the runner feeds; ``exposition()`` is the text a scrape gets. Thread-safe."""

    def __init__(self, tasks_in_hand: Callable[[], float] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.tasks = Counter(
            "t2i_worker_tasks",
            "Tasks this worker finished, by how they ended (completed, failed, cancelled, lost, released).",
            ["result"],
            registry=self.registry,
        )
        for result in RESULTS:
            self.tasks.labels(result=result)  # every series exists from the start, at 0
        self.comfyui_round_trip = Histogram(
            "t2i_worker_comfyui_round_trip_seconds",
            "From queueing the prompt in ComfyUI to holding every image's bytes, successful prompts.",
            buckets=ROUND_TRIP_BUCKETS,
            registry=self.registry,
        )
        self.upload = Histogram(
            "t2i_worker_upload_seconds",
            "Uploading a task's images to the scheduler (the completion call, retries included).",
            buckets=UPLOAD_BUCKETS,
            registry=self.registry,
        )
        if tasks_in_hand is not None:
            gauge = Gauge(
                "t2i_worker_tasks_in_hand",
                "Tasks this worker holds now (running, or queued in its ComfyUI).",
                registry=self.registry,
            )
            gauge.set_function(tasks_in_hand)

    def exposition(self) -> bytes:
        """The Prometheus text format (version 0.0.4) of every figure."""
        return generate_latest(self.registry)
