"""A run's per-stage metrics, as ``summary.json``'s ``stage_metrics`` and ``finehard stats`` show them:
Beam's counters and distributions of the ``finehard`` namespace, per stage, in chain order."""
from __future__ import annotations

from typing import Any

from core.record import METRICS_NAMESPACE

STAGE_ORDER = ("recaption", "expressions", "detect", "negatives")  # chain order


def stage_metrics(result: Any, namespace_prefix: str = f"{METRICS_NAMESPACE}_") -> dict[str, dict[str, Any]]:
    """Per model stage, from the runner's RunInference metrics: samples, seconds in the model, rate.

    Works on any runner whose result can be queried after ``wait_until_finish`` (FnApiRunner,
    Dataflow); an empty dict where the runner reports no metrics.
    """
    try:
        found = result.metrics().query()
    except Exception:  # noqa: BLE001 - a runner without metrics support: the report just lacks the section
        return {}

    def value(r: Any) -> Any:
        return r.committed if r.committed is not None else r.attempted

    stages: dict[str, dict[str, Any]] = {}
    for kind in ("counters", "distributions"):
        for r in found.get(kind, []):
            ns = r.key.metric.namespace
            if not ns.startswith(namespace_prefix):
                continue
            stage = stages.setdefault(ns[len(namespace_prefix):], {})
            v = value(r)
            if r.key.metric.name == "num_inferences":
                stage["samples"] = stage.get("samples", 0) + int(v or 0)
            elif r.key.metric.name == "inference_batch_latency_micro_secs" and v is not None:
                stage["model_seconds"] = stage.get("model_seconds", 0.0) + v.sum / 1e6
                stage["batches"] = stage.get("batches", 0) + v.count
            elif r.key.metric.name == "load_model_latency_milli_secs" and v is not None:
                stage["load_seconds"] = stage.get("load_seconds", 0.0) + v.sum / 1e3
            elif r.key.metric.name in WINDOW_COUNTERS and v is not None:  # transforms.window: a server engine
                name, scale = WINDOW_COUNTERS[r.key.metric.name]
                stage[name] = stage.get(name, 0) + v * scale
            elif r.key.metric.name in WINDOW_MAXIMA and v is not None and v.count:
                name = WINDOW_MAXIMA[r.key.metric.name]
                stage[name] = max(stage.get(name, 0), v.max)
    return finish_stage_metrics(stages)


# The request window's metrics (transforms.window.WindowedStage): summed over bundles and workers ...
WINDOW_COUNTERS = {"window_requests": ("requests", 1), "window_failed_requests": ("failed_requests", 1),
                   "window_answer_micros": ("answer_seconds", 1e-6), "window_busy_micros": ("busy_seconds", 1e-6),
                   "window_in_flight_micros": ("in_flight_seconds", 1e-6),
                   "window_limit_micros": ("limit_seconds", 1e-6)}
# ... or their largest value (concurrency: the largest limit; adaptive: 1 when the limit followed the server)
WINDOW_MAXIMA = {"window_in_flight_max": "in_flight_max", "window_concurrency": "concurrency",
                 "window_adaptive": "adaptive"}
MAX_METRICS = frozenset(WINDOW_MAXIMA.values())
DERIVED_METRICS = frozenset({"samples_per_model_second", "answer_latency_s", "in_flight_mean", "requests_per_second",
                             "concurrency_mean"})


def finish_stage_metrics(stages: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Summed stage metrics, rounded, with their rate, in the chain's order."""
    for stage in stages.values():
        secs = stage.get("model_seconds")
        stage["samples_per_model_second"] = round(stage.get("samples", 0) / secs, 1) if secs else None
        if stage.get("requests"):  # a server engine: what its request window saw
            busy = stage.get("busy_seconds") or 0.0
            stage["answer_latency_s"] = round(stage.get("answer_seconds", 0.0) / stage["requests"], 3)
            # time-weighted mean of requests in flight, and requests answered per second, per worker
            # process while it had any in flight
            stage["in_flight_mean"] = round(stage.get("in_flight_seconds", 0.0) / busy, 2) if busy else None
            # the limit in flight, time-weighted the same way (fixed: the concurrency; adaptive: where it
            # stood); never above the largest limit (the sums are rounded to ms before runs are merged)
            limit = min(stage.get("limit_seconds", 0.0) / busy, stage.get("concurrency", float("inf"))) if busy else None
            stage["concurrency_mean"] = None if limit is None else round(limit, 2)
            stage["requests_per_second"] = round(stage["requests"] / busy, 2) if busy else None
        for k in ("model_seconds", "load_seconds", "answer_seconds", "busy_seconds", "in_flight_seconds",
                  "limit_seconds"):  # rounded after the rates are taken from them
            if k in stage:
                stage[k] = round(stage[k], 3)
    return in_chain_order(stages)


def in_chain_order(stages: dict[str, Any]) -> dict[str, Any]:
    """Stage entries in the chain's order (json files keep them sorted by name)."""
    order = {name: i for i, name in enumerate(STAGE_ORDER)}
    return dict(sorted(stages.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
