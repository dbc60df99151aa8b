"""What a model server says of its own queue: vLLM's Prometheus gauges at ``/metrics`` (every version since
0.4, V0 and V1 engines), ``vllm:num_requests_running`` (requests in its batch) and
``vllm:num_requests_waiting`` (requests queued for a slot); any server exposing the same two gauges works too.

The request window reads them (``core.adaptive_limit.AdaptiveLimit.server_queue``): in the slow start, a
server that holds every request sent to it with none waiting has room, so the limit doubles at once instead
of one answer time later (at 4 s per answer, 256 slots took 24 s to fill); after it, they say when the
server is congested and when slots another worker left are free.
"""
from __future__ import annotations

from typing import Optional

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
METRICS_TIMEOUT_S = 2.0  # a server that takes longer to say is not asked again


def metrics_url(base_url: str) -> str:
    """The server's ``/metrics``: at its root, beside ``/v1`` (an OpenAI base URL ends in ``/v1``)."""
    root = base_url.rstrip("/")
    return (root[:-3] if root.endswith("/v1") else root) + "/metrics"


def parse_queue(text: str) -> Optional[tuple[float, float]]:
    """``(running, waiting)`` from a Prometheus text page, each summed over its label sets (one per model,
    or per engine of a data-parallel server); None when either gauge is missing."""
    sums: dict[str, Optional[float]] = {RUNNING: None, WAITING: None}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith((RUNNING, WAITING)):
            continue
        brace = line.find("{")
        name = line[:brace] if brace >= 0 else line.split(maxsplit=1)[0]
        if name not in sums:  # a longer name with the same start
            continue
        rest = line[line.rfind("}") + 1:] if brace >= 0 else line[len(name):]
        try:
            value = float(rest.split()[0])  # a sample may end in a timestamp
        except (IndexError, ValueError):
            continue
        sums[name] = (sums[name] or 0.0) + value
    running, waiting = sums[RUNNING], sums[WAITING]
    return None if running is None or waiting is None else (running, waiting)
