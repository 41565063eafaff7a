"""The server's Prometheus metrics, on a registry of its own (one per server, so tests can run many).

Counters and histograms are fed by the code that sees the event (the client protocol, the backend's
engine and sessions); the frame counters of live sessions are read at scrape time from their
`stats()` and added to the totals of the sessions already closed, so they are exact and monotonic
without touching the per-frame path.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Session stats keys -> counter names (without the _total suffix, which the family adds).
_FRAME_COUNTERS = {
    "frames": ("avatar_frames_sent", "Video frames sent to clients (repeats included)."),
    "new_frames": ("avatar_frames_fresh", "Video frames sent that were generated in time (not repeats)."),
    "late_frames": ("avatar_frames_late", "Generated frames that were ready after their time."),
    "repeated_frames": ("avatar_frames_repeated", "Video frames sent again because the next was not ready."),
}


class _LiveCollector(Collector):
    """Gauges of the admission stages and the frame counters, computed at scrape time."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterator[Any]:
        yield GaugeMetricFamily("avatar_connections", "Open /ws connections by stage.", labels=["stage"])
        yield GaugeMetricFamily("avatar_sessions", "Live sessions (media slots in use).")
        for name, documentation in _FRAME_COUNTERS.values():
            yield CounterMetricFamily(name, documentation)

    def collect(self) -> Iterator[Any]:
        counts = self._metrics.stage_counts()
        stages = GaugeMetricFamily("avatar_connections", "Open /ws connections by stage.", labels=["stage"])
        for stage, count in counts.items():
            stages.add_metric([stage], count)
        yield stages
        yield GaugeMetricFamily("avatar_sessions", "Live sessions (media slots in use).", value=counts.get("active", 0))
        totals = collections.defaultdict(float, self._metrics.closed_frames)
        for stats in self._metrics.live_session_stats():
            for key in _FRAME_COUNTERS:
                value = stats.get(key)
                if isinstance(value, int | float):
                    totals[key] += value
        for key, (name, documentation) in _FRAME_COUNTERS.items():
            yield CounterMetricFamily(name, documentation, value=totals[key])


class ServerMetrics:
    """Every metric of one server; `render()` is the /metrics body."""

    def __init__(
        self,
        stage_counts: Callable[[], dict[str, int]] = dict,
        live_session_stats: Callable[[], Iterable[dict[str, Any]]] = list,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.stage_counts = stage_counts
        self.live_session_stats = live_session_stats
        self.closed_frames: dict[str, float] = collections.defaultdict(float)
        r = self.registry
        self.sessions_started = Counter("avatar_sessions_started", "Sessions whose offer was answered.", registry=r)
        self.errors = Counter("avatar_errors", "Error messages sent to clients, by code.", ["code"], registry=r)
        self.refused = Counter(
            "avatar_refused_connections",
            "Connections refused or ended by admission, by reason.",
            ["reason"],
            registry=r,
        )
        self.engine_step_seconds = Histogram(
            "avatar_engine_step_seconds",
            "Time of one batched generator step.",
            buckets=(0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.06, 0.08, 0.12, 0.2, 0.5, 1.0),
            registry=r,
        )
        self.engine_batch_size = Histogram(
            "avatar_engine_batch_size",
            "Sessions stepped together in one generator step.",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
            registry=r,
        )
        self.audio_to_frame_seconds = Histogram(
            "avatar_audio_to_frame_seconds",
            "From the arrival of the audio that completes a frame's window to that frame being ready.",
            buckets=(0.005, 0.01, 0.02, 0.03, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0),
            registry=r,
        )
        self.portrait_decode_seconds = Histogram(
            "avatar_portrait_decode_seconds",
            "Decoding an uploaded or built-in portrait and finding its face.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0),
            registry=r,
        )
        r.register(_LiveCollector(self))

    def engine_step(self, batch_size: int, step_s: float) -> None:
        self.engine_batch_size.observe(batch_size)
        self.engine_step_seconds.observe(step_s)

    def session_closed(self, stats: dict[str, Any]) -> None:
        """Fold a closed session's final frame counters into the totals."""
        for key in _FRAME_COUNTERS:
            value = stats.get(key)
            if isinstance(value, int | float):
                self.closed_frames[key] += value

    def render(self) -> bytes:
        return generate_latest(self.registry)
