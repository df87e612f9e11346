"""The gateway's own Prometheus metrics, served by the door at GET /metrics.

The door sees every request, those it refuses itself (401, 404, 413) as well as those LiteLLM
answers, so the counts by status are complete; LiteLLM's own Prometheus callback sees only the
second kind. Each gateway instance is one process (one uvicorn worker) scraped on its own port, so
the counters live in this process and need no shared directory.

Model labels are the names the gateway offers (LLM_APPLIANCE_MODEL_NAMES, comma-separated); any
other name a client sends counts as "other", so that no client can grow the series without bound.
"""

from __future__ import annotations

import os
import threading
from bisect import bisect_left
from collections.abc import Iterable

# Seconds: from a completion token's few milliseconds to a long generation.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
OTHER = "other"

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _label_text(labels: Labels) -> str:
    return "{" + ",".join(f'{name}="{_escape(value)}"' for name, value in labels) + "}" if labels else ""


def _number(value: float) -> str:
    return repr(float(value)) if value != int(value) else str(int(value))


class Registry:
    """Counters, one gauge and histograms in the text exposition format (version 0.0.4)."""

    def __init__(self, model_names: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = {}
        self._gauges: dict[str, dict[Labels, float]] = {}
        self._histograms: dict[str, dict[Labels, list[float]]] = {}
        self._help: dict[str, tuple[str, str]] = {}
        self.model_names = frozenset(name for name in model_names if name)

    def model_label(self, name: str | None) -> str:
        if not name:
            return "none"
        return name if name in self.model_names else OTHER

    def describe(self, name: str, kind: str, text: str) -> None:
        self._help[name] = (kind, text)

    def inc(self, name: str, labels: Labels, amount: float = 1.0) -> None:
        with self._lock:
            series = self._counters.setdefault(name, {})
            series[labels] = series.get(labels, 0.0) + amount

    def add(self, name: str, labels: Labels, amount: float) -> None:
        with self._lock:
            series = self._gauges.setdefault(name, {})
            series[labels] = series.get(labels, 0.0) + amount

    def observe(self, name: str, labels: Labels, value: float) -> None:
        with self._lock:
            series = self._histograms.setdefault(name, {})
            # Per bucket counts (not cumulative), then the +Inf count's place, then the sum.
            counts = series.setdefault(labels, [0.0] * (len(LATENCY_BUCKETS) + 2))
            counts[bisect_left(LATENCY_BUCKETS, value)] += 1
            counts[-1] += value

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            for name in sorted(self._help):
                kind, text = self._help[name]
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
                if kind == "histogram":
                    for labels, counts in sorted(self._histograms.get(name, {}).items()):
                        running = 0.0
                        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), counts[:-1], strict=True):
                            running += count
                            le = "+Inf" if bound == float("inf") else _number(bound)
                            lines.append(f"{name}_bucket{_label_text((*labels, ('le', le)))} {_number(running)}")
                        lines.append(f"{name}_sum{_label_text(labels)} {_number(counts[-1])}")
                        lines.append(f"{name}_count{_label_text(labels)} {_number(running)}")
                else:
                    values = (self._counters if kind == "counter" else self._gauges).get(name, {})
                    suffix = "_total" if kind == "counter" else ""
                    for labels, value in sorted(values.items()):
                        lines.append(f"{name}{suffix}{_label_text(labels)} {_number(value)}")
        return "\n".join(lines) + "\n"


def _registry() -> Registry:
    names = os.environ.get("LLM_APPLIANCE_MODEL_NAMES", "")
    registry = Registry(name.strip() for name in names.split(","))
    registry.describe("llm_gateway_requests", "counter",
                      "Requests answered by the gateway, by route, model and status.")
    registry.describe("llm_gateway_request_duration_seconds", "histogram",
                      "Time from the request's arrival to the end of its answer.")
    registry.describe("llm_gateway_time_to_first_token_seconds", "histogram",
                      "Time from a successful request's arrival to the first byte of its answer's body.")
    registry.describe("llm_gateway_in_flight_requests", "gauge", "Requests being answered now.")
    registry.describe("llm_gateway_tokens", "counter",
                      "Tokens of the requests the gateway recorded, by model and kind.")
    registry.add("llm_gateway_in_flight_requests", (), 0.0)
    return registry


REGISTRY = _registry()


# The routes the API offers; any other path counts as "other".
ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models"})


def route_label(path: str) -> str:
    path = path.rstrip("/")
    if path in ROUTES:
        return path
    return "/v1/models" if path.startswith("/v1/models/") else OTHER


def record_request(route: str, model: str | None, status: int, duration_s: float,
                   first_byte_s: float | None) -> None:
    labels = (("route", route), ("model", REGISTRY.model_label(model)))
    REGISTRY.inc("llm_gateway_requests", (*labels, ("status", str(status))))
    REGISTRY.observe("llm_gateway_request_duration_seconds", labels, duration_s)
    if first_byte_s is not None and status < 400:
        REGISTRY.observe("llm_gateway_time_to_first_token_seconds", labels, first_byte_s)


def in_flight(delta: int) -> None:
    REGISTRY.add("llm_gateway_in_flight_requests", (), float(delta))


def record_tokens(model: str | None, prompt_tokens: int, completion_tokens: int) -> None:
    model_label = REGISTRY.model_label(model)
    if prompt_tokens:
        REGISTRY.inc("llm_gateway_tokens", (("model", model_label), ("kind", "prompt")), prompt_tokens)
    if completion_tokens:
        REGISTRY.inc("llm_gateway_tokens", (("model", model_label), ("kind", "completion")), completion_tokens)
