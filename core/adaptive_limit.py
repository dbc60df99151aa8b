"""How many requests to keep in flight to a server whose size we are not told: an adaptive limit.

A model server runs a fixed number of requests at once (vLLM's ``--max-num-seqs``, 256 by default;
LMDeploy's ``--max-batch-size``; llama.cpp's ``--parallel``); requests beyond that wait in its
queue. The limit follows that queue: as the server reports it where it does (vLLM's ``/metrics``:
requests running and waiting, read by the window, :meth:`AdaptiveLimit.server_queue`), else as it
shows in the answer latency:

- **slow start**: from ``start`` requests, one more for every answer that came back about as fast
  as the fastest rounds (within ``GROW_RATIO``) while the window had more requests than room: the
  limit doubles per round trip, so a 256-slot server fills in about five answer times; where the
  server reports its queue, the limit doubles at once while the server holds every request sent to
  it with none waiting, instead of one answer time later. The first queueing ends the slow start;
  later, slots the server once ran and now leaves free with none waiting (another worker finished)
  are taken at once;
- then, every round (answers to requests sent since the limit last changed): the server is
  **congested** when more requests wait than half of those running (``QUEUE_SHARE``), or, where it
  does not say, when the round's mean latency is above ``BACKOFF_RATIO`` x the baseline (the
  fastest round mean of the last ``HISTORY`` rounds); then the limit is cut by ``CUT``. Otherwise,
  while the limit (not the pipeline) held requests back, it grows by half the square root of the
  server's batch (its running requests; from the latency alone, of the limit) per answer time the
  round took; from the latency alone only below ``GROW_RATIO`` x the baseline (between
  the two it holds: the latency shows a queue late, and growing on would overshoot). With a server
  of B slots and a first-in-first-out queue, a limit of k x B makes every answer take about k times
  the service time, so the limit stays near 1.1-1.5 x B: the server always has a request waiting
  when a slot frees, and the queue stays short. Several windows on one server (a worker process
  each) that read its queue get fair shares: they grow by the same amount per second whatever their
  share (per answer, or by a tenth per round, the window with the larger share grew faster and
  starved the others), and a cut takes more from the larger. From the latency alone they may not
  (each has its own baseline, and any split inside the band holds);
- without the server's figures, every ``PROBE_EVERY`` rounds one round runs at half the limit, so
  the baseline is measured again with the server's queue empty (else a baseline taken while it
  queued would let the limit creep up round after round), and a server that got slower for good is
  learnt;
- an overloaded answer (HTTP 429 or 503, a ``Retry-After``, a timeout) halves the limit at once
  (once per round trip) and ends the slow start;
- it stays within ``[least, most]``.

No threads and no clock of its own: the window tells it about each answer (:meth:`answered`) and
what the server says of its queue (:meth:`server_queue`).
"""
from __future__ import annotations

import math
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
GROWTH = 0.5  # growth per answer time once the slow start is over, times the square root of the server's batch
# (its running requests, where it says; else of the limit)
QUEUE_SHARE = 0.5  # requests waiting in the server, as a share of those running, that mean congestion
MAX_ROUND_SPAN = 4.0  # a round's growth counts at most this many answer times (a window that had little to send)
QUEUE_FRESH_S = 3.0  # the server's queue figures count this long after they were read
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
        self._round_start: Optional[float] = None  # when the round's first answered request left
        self._queue: Optional[tuple[float, float, float]] = None  # (running, waiting, when) as the server said
        self._peak_running = 0.0  # the most requests it said it ran at once: it has at least that many slots

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
        if self._round_start is None:
            self._round_start = sent
        self._round.append(latency)
        self._round_bound += bound
        base = self.baseline
        if self.slow_start and bound and base is not None and latency <= GROW_RATIO * base:
            self._value = min(float(self.most), self._value + SLOW_START_STEP)
        if len(self._round) >= min(max(self.value // 2, 4), 32):
            self._end_round(now)

    def server_queue(self, running: float, waiting: float, in_flight: int, bound: bool, now: float) -> None:
        """The server's own count of requests in its batch (``running``) and queued for a slot (``waiting``),
        all its clients' together, read at ``now`` while ``in_flight`` of ours are out and (``bound``) more
        wait for room. Kept for the rounds' congestion test; in the slow start, a server that has all of
        ours in hand with none waiting has room, and the limit doubles now; after it, a server that runs
        fewer than it once ran at once with none waiting has those slots free, and the limit takes them."""
        self._queue = (running, waiting, now)
        self._peak_running = max(self._peak_running, running)
        if waiting > 0 or not bound:
            return
        if self.slow_start:
            if running >= in_flight:
                self._value = min(float(self.most), max(self._value, 2.0 * in_flight))
        elif running < self._peak_running:  # slots it ran at once before are free, none waits (another worker
            # finished, say): fill them now, not at the rounds' pace
            self._value = min(float(self.most), max(self._value, in_flight + self._peak_running - running))

    def _fresh_queue(self, now: float) -> Optional[tuple[float, float]]:
        """(running, waiting) if the server said so lately."""
        if self._queue is None or now - self._queue[2] > QUEUE_FRESH_S:
            return None
        return self._queue[0], self._queue[1]

    def _end_round(self, now: float) -> None:
        """What a round's end does: a probe round ends, or the limit is cut, held (ending the slow start) or grown."""
        mean = statistics.fmean(self._round)  # the mean: Little's law (a server that serves unfairly keeps its median low)
        bound = self._round_bound * 2 >= len(self._round)
        self._medians.append(mean)
        base = self.baseline
        ratio = mean / base if base else 1.0
        answer_times = min((now - self._round_start) / base, MAX_ROUND_SPAN) if self._round_start is not None and base else 1.0
        queue = self._fresh_queue(now)
        congested = queue[1] > QUEUE_SHARE * queue[0] if queue is not None else ratio > BACKOFF_RATIO
        self._rounds += 1
        if self._probing is not None:  # a probe round: its mean is a baseline sample, nothing more
            self._change(self._probing, now)
            self._probing = None
        elif queue is None and not self.slow_start and self._rounds >= PROBE_EVERY:
            self._rounds, self._probing = 0, self._value
            self._change(self._value / 2, now)
        elif congested:
            self._change(self._value * CUT, now)
            self.slow_start = False
            self._last_cut = now
            self.cuts += 1
        elif self.slow_start and (queue[1] > 0 if queue is not None else ratio > GROW_RATIO):
            self.slow_start = False  # the server started to queue: the rounds take it from here
            self._change(self._value, now)
        elif self.slow_start:  # it grows per answer: a new round, but answers in flight still count
            self._round, self._round_bound, self._round_start = [], 0, None
        elif queue is None and ratio > GROW_RATIO:  # from the latency alone, a short queue: hold (growing on
            self._change(self._value, now)  # until the cut would overshoot, the latency showing the queue late)
        elif bound:
            # the same step for every window of the server (from its size as it says, else its own limit), so
            # windows that share it converge to equal shares (a cut takes more from the larger)
            size = max(queue[0], 1.0) if queue is not None else self._value
            self._change(self._value + GROWTH * math.sqrt(size) * answer_times, now)
        else:
            self._change(self._value, now)

    def _change(self, value: float, now: float) -> None:
        """Set the limit and start a new round (of requests sent from ``now`` on)."""
        self._value = min(float(self.most), max(float(self.least), value))
        self._mark = now
        self._round, self._round_bound, self._round_start = [], 0, None
