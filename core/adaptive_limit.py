"""How many requests to keep in flight to a server whose size we are not told: an adaptive limit.

A model server runs a fixed number of requests at once (vLLM's ``--max-num-seqs``, 256 by default;
LMDeploy's ``--max-batch-size``; llama.cpp's ``--parallel``); requests beyond that wait in its
queue, and the wait shows in the answer latency. So the limit follows the latency:

- **slow start**: from ``start`` requests, one more for every answer that came back about as fast
  as the fastest rounds (within ``GROW_RATIO``) while the window had more requests than room: the
  limit doubles per round trip, so a 256-slot server fills in about five answer times;
- every round (answers to requests sent since the limit last changed) its median latency is held
  against the baseline (the fastest round median of the last ``HISTORY`` rounds): above
  ``BACKOFF_RATIO`` the server is queueing markedly, and the limit is cut by ``CUT``; below
  ``GROW_RATIO`` (and only while the limit, not the pipeline, held requests back) it grows by a
  tenth; in between it holds. With a server of B slots and a first-in-first-out queue, a limit of
  k x B makes every answer take about k times the service time, so the limit settles near
  1.2-1.5 x B: the server always has a request waiting when a slot frees, and no more;
- every ``PROBE_EVERY`` rounds one round runs at half the limit, so the baseline is measured
  again with the server's queue empty (else a baseline taken while it queued would let the limit
  creep up round after round), and a server that got slower for good is learnt;
- an overloaded answer (HTTP 429 or 503, a ``Retry-After``, a timeout) halves the limit at once
  (once per round trip) and ends the slow start;
- it stays within ``[least, most]``;
- where the server says how many requests it runs and how many wait (vLLM's ``/metrics``, read by the
  window every ``QUEUE_POLL_S`` during the slow start: :meth:`AdaptiveLimit.server_queue`), a server
  that holds every request sent to it with none waiting has room, and the limit doubles at once
  instead of one answer time later; the first waiting request ends that.

No threads and no clock of its own: the window tells it about each answer (:meth:`answered`).
"""
from __future__ import annotations

import statistics
from collections import deque
from typing import Optional

START = 8  # the limit before anything is known (the fixed default of earlier versions)
MOST = 320  # never more per window: 1.25 x a default vLLM server's 256 sequence slots
SLOW_START_STEP = 1.0  # more per fast answer in the slow start: x2 per round trip (a 256-slot server: ~5 answer
# times; x3 overshot an 8-slot server to 3-4 x its slots before the first slow round came back)
GROW_RATIO = 1.2  # a round this close to the baseline latency: the server has room
BACKOFF_RATIO = 1.5  # a round this much slower than the baseline: requests queue in the server
CUT = 0.75  # the limit's share kept after a slow round
OVERLOAD_CUT = 0.5  # ... and after an overloaded answer (429, 503, Retry-After, timeout)
GROW_SHARE = 0.1  # growth per round once the slow start is over
HISTORY = 50  # rounds the baseline latency remembers (so a server that got slower for good is learnt) ...
PROBE_EVERY = 40  # ... and a round at half the limit this often, so a queue-free round is always among them


class AdaptiveLimit:
    """The in-flight limit of one request window (``value``); not thread-safe: the window calls it
    under its own lock."""

    def __init__(self, start: int = START, most: int = MOST, least: int = 1):
        self.least, self.most = max(1, int(least)), max(1, int(most))
        self._value = float(min(max(int(start), self.least), self.most))
        self.slow_start = True
        self._medians: "deque[float]" = deque(maxlen=HISTORY)
        self._round: list[float] = []  # latencies of answers to requests sent since the last change
        self._round_bound = 0  # how many of them came while the limit held requests back
        self._mark = float("-inf")  # when the limit last changed (requests sent before say nothing of it)
        self._last_cut = float("-inf")
        self.cuts = 0  # times the limit was cut (slow rounds and overloads)
        self._rounds = 0  # rounds since the last probe
        self._probing: Optional[float] = None  # the limit to go back to after a probe round

    @property
    def value(self) -> int:
        return int(self._value)

    @property
    def baseline(self) -> Optional[float]:
        """The no-load answer latency as far as known: the fastest recent round's median."""
        return min(self._medians) if self._medians else None

    def answered(self, sent: float, latency: float, bound: bool, overloaded: bool, now: float) -> None:
        """One answer: to a request sent at ``sent`` (the window's clock), after ``latency`` s;
        ``bound``: the window had requests waiting for room when it came; ``overloaded``: the server
        said it is overloaded (or timed out) since the last answer."""
        if overloaded:
            base = self.baseline or latency
            if now - self._last_cut >= base:  # one cut per round trip: a burst of 429s is one signal
                self._change(self._value * OVERLOAD_CUT, now)
                self._last_cut, self.slow_start, self._probing = now, False, None
                self.cuts += 1
            return
        if sent < self._mark:
            return
        self._round.append(latency)
        self._round_bound += bound
        base = self.baseline
        if self.slow_start and bound and base is not None and latency <= GROW_RATIO * base:
            self._value = min(float(self.most), self._value + SLOW_START_STEP)
        if len(self._round) >= min(max(self.value // 2, 4), 32):
            self._end_round(now)

    def server_queue(self, running: float, waiting: float, in_flight: int, bound: bool) -> bool:
        """The server's own count of requests in its batch (``running``) and queued for a slot (``waiting``),
        all its clients' together, while ``in_flight`` of ours are out and (``bound``) more wait for room.
        In the slow start, a server that has all of ours in hand with none waiting has room: the limit
        doubles now. Returns whether asking again is worth it (not after the slow start, nor once
        requests wait: the server is full, and the latency rounds take it from there)."""
        if not self.slow_start or waiting > 0:
            return False
        if bound and running >= in_flight:
            self._value = min(float(self.most), max(self._value, 2.0 * in_flight))
        return True

    def _end_round(self, now: float) -> None:
        median = statistics.fmean(self._round)  # the mean: Little's law (a server that serves unfairly keeps its median low)
        bound = self._round_bound * 2 >= len(self._round)
        self._medians.append(median)
        ratio = median / self.baseline if self.baseline else 1.0
        self._rounds += 1
        if self._probing is not None:  # a probe round: its median is a baseline sample, nothing more
            self._change(self._probing, now)
            self._probing = None
        elif not self.slow_start and self._rounds >= PROBE_EVERY:
            self._rounds, self._probing = 0, self._value
            self._change(self._value / 2, now)
        elif ratio > BACKOFF_RATIO:
            self._change(self._value * CUT, now)
            self.slow_start = False
            self._last_cut = now
            self.cuts += 1
        elif ratio > GROW_RATIO:
            self.slow_start = False
            self._change(self._value, now)
        elif self.slow_start:  # it grows per answer: a new round, but answers in flight still count
            self._round, self._round_bound = [], 0
        elif bound:
            self._change(self._value + max(1.0, self._value * GROW_SHARE), now)
        else:
            self._change(self._value, now)

    def _change(self, value: float, now: float) -> None:
        """Set the limit and start a new round (of requests sent from ``now`` on)."""
        self._value = min(float(self.most), max(float(self.least), value))
        self._mark = now
        self._round, self._round_bound = [], 0
