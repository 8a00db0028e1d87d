"""``/api/health`` and ``/metrics`` (Prometheus text, read when scraped)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from glimpse.streaming.version import glimpse_version

from .auth import token_dependency

router = APIRouter(tags=["health"], dependencies=[Depends(token_dependency)])


@router.get("/api/health")
async def health(request: Request) -> dict:
    state = request.app.state
    return {"status": "ok", "version": glimpse_version(),
            "uptime_s": round(time.monotonic() - state.started, 1),
            "sessions": len(state.sessions.ids()), "replays": len(state.replays.list())}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)


class ServiceCollector:
    """Every figure read from the sessions and the hub at scrape time (no double books)."""

    def __init__(self, app_state):
        self.state = app_state

    def collect(self) -> Iterator[Metric]:
        sessions = [self.state.sessions.get(i) for i in self.state.sessions.ids()]
        per_session = {
            "decode_rate": GaugeMetricFamily("glimpse_decode_rate", "Frames decoded per second",
                                             labels=["session"]),
            "latency": GaugeMetricFamily("glimpse_latency_ms", "Latency percentiles per stage (ms)",
                                         labels=["session", "stage", "quantile"]),
            "decoded": CounterMetricFamily("glimpse_frames_decoded", "Frames decoded",
                                           labels=["session"]),
            "dropped": CounterMetricFamily("glimpse_windows_dropped", "Windows replaced before "
                                           "decoding", labels=["session"]),
            "stale": CounterMetricFamily("glimpse_windows_stale", "Windows skipped as stale",
                                         labels=["session"]),
            "restarts": CounterMetricFamily("glimpse_worker_restarts", "Worker processes restarted",
                                            labels=["session"]),
        }
        for session in sessions:
            s = session.status()
            sid = session.id
            per_session["decode_rate"].add_metric([sid], s["decode_rate"])
            for stage, pct in s["latency_ms"].items():
                for q in ("p50", "p99"):
                    if pct.get(q) is not None:
                        per_session["latency"].add_metric([sid, stage, q], pct[q])
            per_session["decoded"].add_metric([sid], s["n_decoded"])
            per_session["dropped"].add_metric([sid], s["n_dropped"])
            per_session["stale"].add_metric([sid], s["n_stale"])
            per_session["restarts"].add_metric([sid], s["worker"]["restarts"])
        yield from per_session.values()
        hub = self.state.hub.stats()
        yield GaugeMetricFamily("glimpse_ws_clients", "WebSocket clients connected", value=hub["clients"])
        for key, help_ in (("n_dropped", "Frames a slow client never got (newest won)"),
                           ("n_slow_disconnects", "Clients disconnected for not reading"),
                           ("n_bad_messages", "Malformed client messages"),
                           ("n_published", "Messages published")):
            yield CounterMetricFamily(f"glimpse_ws_{key[2:]}", help_, value=hub[key])


def make_registry(app_state) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(ServiceCollector(app_state))
    return registry
