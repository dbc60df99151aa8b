"""Saturation: how busy the pipeline keeps a model server (and a simulated in-process device).

A batch server of our own stands in for vLLM/LMDeploy: an OpenAI-compatible HTTP server on
127.0.0.1 with B batch slots; a request in service takes L seconds, extra requests wait in a FIFO
queue (capacity B/L requests/s; a freed slot goes to the next in line at once, as a GPU server's next
step takes it), and it logs when each request arrives, starts and ends. Each run
is a whole ``finehard shards`` local run in a child process (stub engines for the other stages):

- ``captions``: ``--stages recaption`` with ``--captioner openai:...``;
- ``negatives``: all stages, stub detector, the stub captioner with two words per object picked by the
  image (``varied_caption``: each image's expressions its own, as a real captioner's, so the server gets
  about a request per region), ``--negatives openai:...`` (the server answers with the stub's colour swaps
  of the expression, so answers validate);
- the runs at 256 slots read ``--n-large`` images (4,000): a run of 1,000 is 4-9 rounds of such a server;
- in-process (the default local run) and with 2 workers (``--direct_num_workers=2``); the
  concurrency as ``--concurrency`` says: ``auto`` (default: none given, the window adapts its limit
  to the server, as a user's default run does), ``sized`` (``ceil(1.25 x B / workers)`` per worker,
  the docs/engines.md sizing rule) or a number;
- ``old default``: in the same run, captions in-process at B = 32, L = 1 s with a fixed 8 in flight
  (the default before the adaptive window) beside the same run with the default now; prints
  ``saturation_default: ratio=X.XX`` (busy share now / busy share then);
- ``device``: a simulated in-process GPU captioner (``sleep(L)`` per batch of up to B images, as a
  device would take) through the RunInference path;
- the server reports its queue at ``/metrics`` as vLLM does (requests running and waiting), which the
  adaptive window reads; ``--no-server-metrics`` answers 404 there, as other servers do;
- ``both``: a captioner server and a negatives server at once (busy shown: the less busy of the
  two); the goal is a wall time within 1.25 x the slower stage's ideal plus the start-up.

Per run: busy = slot-seconds used / (B x time from the first request to the last answer), beside the best
possible (N requests in ceil(N / B) rounds of L: the last round's empty slots are lost whatever the pipeline
does); ramp = the slot-seconds left idle before the server first had all B slots busy, tail = those after it
last had them all busy (both as a share of the same total); time from launch to the first
request; wall time against the ideal (requests x L / B). Every run must write and reconcile every
sample. Ends with ``saturation: ratio=X.XX``: the worst busy share of the L >= 1 s runs (1.00 is a
server never idle). ``--quick``: fewer images and runs, for iterating.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (bench_args, fresh_dir, make_input, markdown_table, publish,  # noqa: E402
                          python_child, run_child)

FULL = [(8, 1.0), (32, 1.0), (256, 4.0), (8, 0.2), (32, 0.2)]
QUICK = [(8, 0.2), (32, 1.0)]
LARGE_N = 4000  # images at 256 slots: on 1,000 a run is 4-9 rounds of the server, and the last round's empty slots
# alone (the "best possible" column) kept the negatives under 95% whatever the pipeline did
_EXPRESSION = re.compile(r'Object description: "(.*)"')
_WORDS = ("shiny", "dusty", "smooth", "rough", "glossy", "matte", "faded", "clean", "bold", "quiet", "worn",
          "neat", "sharp", "soft", "plain", "odd", "calm", "proud", "tidy", "old")


class _QuietServer(ThreadingHTTPServer):
    # the listen backlog, as a real server's (uvicorn: 2048): set on the class, since the constructor listens. With
    # the default 5, a window opening a hundred connections at once overflowed it, and a request whose connection
    # the kernel had dropped waited for the 120 s timeout (seen once in three runs at 256 slots)
    request_queue_size = 2048

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client closing its idle keep-alive connection
            super().handle_error(request, client_address)


class _Turn:
    """A queued request's place: given a slot (and the time it was given) by the request that frees it."""

    def __init__(self) -> None:
        self._given = threading.Event()
        self.start = 0.0

    def give(self, when: float) -> None:
        self.start = when
        self._given.set()

    def wait(self) -> float:
        self._given.wait()
        return self.start


class BatchServer:
    """B slots of L seconds each, a FIFO queue in front; logs (arrival, start, end) per request."""

    def __init__(self, slots: int, seconds: float, metrics: bool = True):
        self.slots, self.seconds, self.metrics = slots, seconds, metrics
        self.log: list[tuple[float, float, float]] = []
        self._lock = threading.Lock()
        self._busy = 0
        self._queue: "deque[_Turn]" = deque()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as vLLM's server

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - readiness: GET /v1/models; the queue: GET /metrics
                if self.path.rstrip("/").endswith("/metrics"):
                    self._send(server.queue_page(), 200 if server.metrics else 404)
                else:
                    self._send({"object": "list", "data": [{"id": "sim"}]})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                self._send(server.serve(body))

            def _send(self, payload: Any, status: int = 200) -> None:
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def serve(self, body: dict[str, Any]) -> dict[str, Any]:
        """A request's service: a free slot now, else a place in the FIFO queue until a finishing request
        hands its slot over. The hand-over wakes that one waiter and starts its L seconds at once (a GPU
        server fills a freed slot at its next step), however late its thread runs; a condition waking every
        waiter at each freed slot (as this server first did) kept slots empty with requests queued, up to half
        of them at 256 slots when a round ended, as no real server does."""
        arrival = time.monotonic()
        with self._lock:
            if self._busy < self.slots and not self._queue:
                self._busy += 1
                turn = None
            else:
                turn = _Turn()
                self._queue.append(turn)
        start = turn.wait() if turn is not None else time.monotonic()
        time.sleep(max(0.0, start + self.seconds - time.monotonic()))
        end = time.monotonic()
        with self._lock:
            self.log.append((arrival, start, end))
            if self._queue:
                self._queue.popleft().give(end)  # the slot goes to the next in line, still counted busy
            else:
                self._busy -= 1
        return completion(answer_for(body))

    def queue_page(self) -> str:
        """Its queue as vLLM's ``/metrics`` says it: requests in service and waiting for a slot."""
        with self._lock:
            running, waiting = self._busy, len(self._queue)
        return (f'vllm:num_requests_running{{model_name="sim"}} {float(running)}\n'
                f'vllm:num_requests_waiting{{model_name="sim"}} {float(waiting)}\n')

    def __enter__(self) -> "BatchServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def completion(content: str) -> dict[str, Any]:
    return {"id": "sim", "object": "chat.completion",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}]}


def answer_for(body: dict[str, Any]) -> str:
    """A caption for an image request; the stub's ten colour swaps for a negatives request."""
    content = body.get("messages", [{}])[-1].get("content")
    if isinstance(content, str):
        found = _EXPRESSION.search(content)
        if found:
            from model_stubs.negatives import StubNegatives

            return json.dumps(StubNegatives._one(found.group(1)))
    from core.synthetic import SHAPES

    # every shape the synthetic scenes draw (the stub detector then finds the scene's own objects), each with
    # two words that are no attribute the detector checks, picked by the request: captions differ from image to
    # image as a real captioner's do, so the negatives server sees as many distinct expressions as a real run
    pick = int(hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest(), 16)
    words = []
    for shape in SHAPES:
        pick, first = divmod(pick, len(_WORDS))
        pick, second = divmod(pick, len(_WORDS))
        words.append(f"There is a {_WORDS[first]} {_WORDS[second]} {shape} in the picture.")
    return " ".join(words)


def busy_report(log: Sequence[tuple[float, float, float]], slots: int, launch: float) -> dict[str, Any]:
    """Busy share, ramp and tail losses, time to the first request, from a server log."""
    first, last = min(a for a, _, _ in log), max(e for _, _, e in log)
    total = slots * (last - first)
    used = sum(e - s for _, s, e in log)
    # slots in service over time: (from, to, busy slots) from the first arrival to the last answer
    events = sorted([(s, 1) for _, s, _ in log] + [(e, -1) for _, _, e in log])
    steps, busy, at = [], 0, first
    for t, d in events:
        steps.append((at, t, busy))
        busy, at = busy + d, t
    peak = max(b for _, _, b in steps)  # B when the server was ever full
    full = [i for i, (_, _, b) in enumerate(steps) if b == peak]
    ramp = sum((t1 - t0) * (slots - b) for t0, t1, b in steps[:full[0]])
    tail = sum((t1 - t0) * (slots - b) for t0, t1, b in steps[full[-1] + 1:])
    rounds = math.ceil(len(log) / slots)  # the best a FIFO server can do with every request there at the start
    return {"requests": len(log), "busy": used / total, "ramp": ramp / total, "tail": tail / total,
            "best": len(log) / (slots * rounds),
            "first_request_s": first - launch, "span_s": last - first, "last_answer_s": last - launch,
            "busy_from_launch": used / (slots * (last - launch))}


DEVICE_CHILD = """
import json, sys, time, logging
logging.disable(logging.WARNING)
from core.engines import Captioner, EngineEntry, stub_provenance
from stages.caption import CAPTIONERS
B, L = int(sys.argv[2]), float(sys.argv[3])
LOG = []

class SimDevice(Captioner):
    def __init__(self, spec, **_):
        self.provenance = stub_provenance("simulated-device")
    def caption(self, images):
        start = time.monotonic()
        time.sleep(L)
        LOG.append((start, time.monotonic(), len(images)))
        return ["A simulated caption of a few shapes." for _ in images]

sys.modules["sim_device"] = sys.modules[__name__]
CAPTIONERS.entries["simdevice"] = EngineEntry("sim_device:SimDevice", False, False, "bench: a sleeping device")
t0 = time.perf_counter()
from pipeline.config import parse_config
from pipeline.run import run
summary = run(parse_config(json.loads(sys.argv[1])))
from bench.common import child_report
child_report({"run_s": time.perf_counter() - t0, "read": summary["read"], "written": summary["written"],
              "reconciled": summary["reconciled"], "device_log": LOG})
"""


def device_report(log: list[list[float]], slots: int, launch_mono: float) -> dict[str, Any]:
    """Busy share of the simulated device: seconds in its calls x batch fill / its span."""
    first, last = min(s for s, _, _ in log), max(e for _, e, _ in log)
    used = sum((e - s) * n / slots for s, e, n in log)
    return {"requests": sum(n for _, _, n in log), "busy": used / (last - first), "ramp": 0.0, "tail": 0.0,
            "first_request_s": first - launch_mono, "span_s": last - first, "batches": len(log)}


def concurrency_for(setting: str, slots: int, workers: int) -> Optional[int]:
    """The concurrency a run sets: None (``auto``: the adaptive default), the sizing rule, or a number."""
    if setting == "auto":
        return None
    return math.ceil(1.25 * slots / workers) if setting == "sized" else int(setting)


def run_once(kind: str, mode: str, slots: int, seconds: float, manifest: str, n: int,
             setting: str = "auto", metrics: bool = True) -> dict[str, Any]:
    out = fresh_dir("saturation")
    workers = 2 if mode == "2 workers" else 1
    concurrency = concurrency_for(setting, slots, workers)
    spec_limit = "" if concurrency is None else f"concurrency={concurrency}&"
    flag_limit = [] if concurrency is None else ["--caption-concurrency", str(concurrency)]
    flags = ["--input", manifest, "--output", out, "--samples-per-shard", "250", "--wave-samples", "0",
             "--captioner", "stub", "--detector", "stub", "--negatives", "stub", "--model-cache", "none"]
    if workers > 1:
        flags += ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
    try:
        if kind == "device":
            flags[flags.index("--captioner") + 1] = "simdevice"
            flags += ["--stages", "recaption", "--batch-size", str(slots)]
            launch = time.monotonic()
            run = run_child(python_child(DEVICE_CHILD, json.dumps(flags), str(slots), str(seconds)))
            if run.returncode != 0:
                raise RuntimeError(f"device run failed:\n{run.stderr[-3000:]}")
            result = run.result()
            report = device_report(result["device_log"], slots, launch)
        elif kind == "both":  # a captioner server and a negatives server, both B slots x L s
            with BatchServer(slots, seconds, metrics) as captioner, BatchServer(slots, seconds, metrics) as negatives:
                flags[flags.index("--captioner") + 1] = f"openai:{captioner.url}?warmup=30#sim"
                flags[flags.index("--negatives") + 1] = (f"openai:{negatives.url}?{spec_limit}"
                                                         f"structured=none&warmup=30#sim")
                flags += flag_limit
                launch = time.monotonic()
                run = run_child(python_child(PIPELINE_CHILD, json.dumps(flags)))
                if run.returncode != 0:
                    raise RuntimeError(f"{kind} run failed:\n{run.stderr[-3000:]}")
                result = run.result()
                caps, negs = busy_report(captioner.log, slots, launch), busy_report(negatives.log, slots, launch)
            slower = max(caps["requests"], negs["requests"]) * seconds / slots
            startup = min(caps["first_request_s"], negs["first_request_s"])
            report = {**(caps if caps["busy"] <= negs["busy"] else negs), "requests": caps["requests"] + negs["requests"],
                      "first_request_s": startup,
                      "detail": f"captioner busy {caps['busy']:.1%} from {caps['first_request_s']:.1f} s to "
                                f"{caps['last_answer_s']:.1f} s, negatives busy {negs['busy']:.1%} from "
                                f"{negs['first_request_s']:.1f} s to {negs['last_answer_s']:.1f} s; wall "
                                f"{run.wall_s:.1f} s vs 1.25 x slower ideal + start-up "
                                f"{1.25 * slower + startup:.1f} s"}
            ideal = slower
        else:
            with BatchServer(slots, seconds, metrics) as server:
                if kind in ("captions", "launch"):
                    flags[flags.index("--captioner") + 1] = f"openai:{server.url}?warmup=30#sim"
                    flags += ["--stages", "recaption", *flag_limit]
                    if kind == "launch":  # what a rented server pays for: the default waves, start-up included
                        del flags[flags.index("--wave-samples"):flags.index("--wave-samples") + 2]
                else:  # each image's expressions its own, as a real captioner's are (varied_caption)
                    flags[flags.index("--captioner") + 1] = "varied"
                    flags[flags.index("--negatives") + 1] = (f"openai:{server.url}?{spec_limit}"
                                                             f"structured=none&warmup=30#sim")
                launch = time.monotonic()
                run = run_child(python_child(PIPELINE_CHILD, json.dumps(flags)))
                if run.returncode != 0:
                    raise RuntimeError(f"{kind} run failed:\n{run.stderr[-3000:]}")
                result = run.result()
                report = busy_report(server.log, slots, launch)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if kind != "both":
        ideal = report["requests"] * seconds / slots
    metrics = (result.get("stage_metrics") or {}).get("negatives" if kind == "negatives" else "recaption", {})
    limit = ("-" if kind == "device" else str(concurrency) if concurrency is not None else
             f"auto ({metrics.get('concurrency_mean', '?')} mean, {metrics.get('concurrency', '?')} max)"
             if metrics else "auto")
    return {"kind": kind, "mode": mode, "B": slots, "L": seconds, "concurrency": limit,
            "images": n, **report, "wall_s": run.wall_s, "ideal_s": ideal,
            "wall_vs_ideal": run.wall_s / ideal if ideal else None,
            "ok": result["written"] == result["read"] == n and result["reconciled"] is True}


def varied_caption(image: Any) -> str:
    """The stub captioner's caption of a synthetic scene with two words, picked by the scene, before each
    object's expression (words the stub detector does not check, so it still finds every object): each image's
    expressions differ as a real captioner's do, so the negatives server gets a question per region, not the
    same few hundred expressions the plain stub repeats across the input (most of which a run shares or
    re-asks: 0.4-1.1 requests per image, a feed too thin for a 256-slot server)."""
    from core.synthetic import long_caption, scene_from_image
    from model_stubs.captioner import StubCaptioner

    scene = scene_from_image(image)
    if not scene or not scene.get("objects"):
        return StubCaptioner._one(image)
    pick = int(hashlib.sha1(json.dumps(scene, sort_keys=True).encode()).hexdigest(), 16)
    objects = []
    for obj in scene["objects"]:
        pick, first = divmod(pick, len(_WORDS))
        pick, second = divmod(pick, len(_WORDS))
        article, _, rest = obj["expr"].partition(" ")
        objects.append({**obj, "expr": f"{article} {_WORDS[first]} {_WORDS[second]} {rest}"})
    return long_caption({**scene, "objects": objects})


def varied_captioner(spec: Any, **_: Any) -> Any:
    """``--captioner varied`` in the bench's runs: the stub's captions through :func:`varied_caption`."""
    from core.engines import Captioner, stub_provenance

    class VariedCaptions(Captioner):
        def __init__(self) -> None:
            self.provenance = stub_provenance("captioner-oracle-varied")

        def caption(self, images: list[Any]) -> list[str]:
            return [varied_caption(image) for image in images]

    return VariedCaptions()


PIPELINE_CHILD = """
import json, sys, time, logging
logging.disable(logging.WARNING)
from core.engines import EngineEntry
from stages.caption import CAPTIONERS
CAPTIONERS.entries["varied"] = EngineEntry("bench.saturation:varied_captioner", False, False,
                                           "bench: the stub's captions, each image's expressions its own")
t0 = time.perf_counter()
from pipeline.config import parse_config
from pipeline.run import run
summary = run(parse_config(json.loads(sys.argv[1])))
from bench.common import child_report
child_report({"run_s": time.perf_counter() - t0, "read": summary["read"], "written": summary["written"],
              "reconciled": summary["reconciled"], "stage_metrics": summary.get("stage_metrics", {})})
"""


def plan(quick: bool, setting: str, launch: bool = False) -> list[tuple[str, str, int, float, str]]:
    if launch:  # busy from launch to the last answer (issue #23's 10,000-image goal), default waves
        return [("launch", "in-process", 32, 1.0, setting)]
    runs = []
    if not quick:  # the baseline first: the old default (a fixed 8) and the default now, same server
        runs += [("captions", "in-process", 32, 1.0, "8"), ("captions", "in-process", 32, 1.0, "auto")]
    for slots, seconds in (QUICK if quick else FULL):
        for kind in ("captions", "negatives"):
            for mode in (("in-process",) if quick else ("in-process", "2 workers")):
                runs.append((kind, mode, slots, seconds, setting))
    runs.append(("device", "in-process", 32, 1.0 if not quick else 0.2, setting))
    runs.append(("both", "in-process", 32, 1.0 if not quick else 0.2, setting))
    return runs


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = bench_args(__doc__.splitlines()[0], 1000, argv,
                      lambda p: (p.add_argument("--quick", action="store_true",
                                                help="200 images, two server sizes, in-process only"),
                                 p.add_argument("--concurrency", default="auto",
                                               help="auto (none given: the adaptive default), sized "
                                                    "(ceil(1.25 B / workers)) or a number"),
                                p.add_argument("--launch", action="store_true",
                                               help="only the busy-from-launch run (captions, B = 32, L = 1 s, "
                                                    "the default waves; use with --n 10000)"),
                                p.add_argument("--no-server-metrics", action="store_true",
                                                help="the server does not report its queue (GET /metrics: 404), as "
                                                     "servers other than vLLM"),
                                p.add_argument("--sizes", default="",
                                                help="only these server sizes, as B:L pairs (comma list, e.g. 256:4)"),
                                p.add_argument("--n-large", type=int, default=LARGE_N,
                                                help="images for the runs at 256 or more slots (at least --n)"),
                                p.add_argument("--only", default="",
                                                help="run only these kinds (comma list of captions, negatives, "
                                                     "device)")))
    n = 200 if args.quick and args.n == 1000 else args.n
    manifests = {n: make_input(n, args.seed)}
    only = {k.strip() for k in args.only.split(",") if k.strip()}
    sizes = {(int(b), float(l)) for b, l in (pair.split(":") for pair in args.sizes.split(",") if pair.strip())}
    rows = []
    if args.concurrency not in ("auto", "sized") and not args.concurrency.isdigit():
        print(f"--concurrency must be auto, sized or a number, got {args.concurrency!r}", file=sys.stderr)
        return 2
    baseline: dict[str, float] = {}
    for index, (kind, mode, slots, seconds, setting) in enumerate(plan(args.quick, args.concurrency, args.launch)):
        if only and kind not in only:
            continue
        if sizes and (slots, seconds) not in sizes:
            continue
        try:
            images = max(n, args.n_large) if slots >= 256 else n
            if images not in manifests:
                manifests[images] = make_input(images, args.seed)
            r = run_once(kind, mode, slots, seconds, manifests[images], images, setting, not args.no_server_metrics)
        except RuntimeError as e:  # a failed run is a row that says so (and a ratio of 0)
            print(f"{kind} {mode} B={slots} L={seconds}: FAILED: {str(e)[-1500:]}", flush=True)
            r = {"kind": kind, "mode": mode, "B": slots, "L": seconds, "concurrency": None, "images": images,
                 "requests": 0,
                 "busy": 0.0, "ramp": 0.0, "tail": 0.0, "first_request_s": 0.0, "wall_s": 0.0, "ideal_s": 0.0,
                 "wall_vs_ideal": None, "ok": False}
        if index < 2 and not args.quick and not args.launch:  # the old default vs the default now: a ratio, not a table row
            baseline[setting] = r["busy"] if r["ok"] else 0.0
            print(f"baseline: captions in-process B=32 L=1.0 concurrency {setting}: busy {r['busy']:.1%}, "
                  f"wall {r['wall_s']:.1f} s vs ideal {r['ideal_s']:.1f} s", flush=True)
            continue
        rows.append(r)
        print(f"{kind:<10}{mode:<12}B={slots:<4}L={seconds:<4} busy {r['busy']:.1%}"
              + (f" of {r['best']:.1%} possible" if r.get("best") else "") + f" (ramp {r['ramp']:.1%}, "
              f"tail {r['tail']:.1%}), first request {r['first_request_s']:.1f} s, {r['requests']} requests, "
              f"wall {r['wall_s']:.1f} s vs ideal {r['ideal_s']:.1f} s, {'ok' if r['ok'] else 'LOST SAMPLES'}"
              + (f" ({r['detail']})" if r.get("detail") else ""), flush=True)
    table = markdown_table(
        ["run", "workers", "B", "L s", "concurrency", "images", "requests", "busy", "best possible", "busy from launch", "ramp loss",
         "tail loss",
         "first request s", "wall s", "ideal s", "wall/ideal", "all written"],
        [[r["kind"], r["mode"], r["B"], r["L"], r["concurrency"] or "-", r["images"], r["requests"], f"{r['busy']:.1%}",
          f"{r['best']:.1%}" if r.get("best") else "-",
          f"{r['busy_from_launch']:.1%}" if "busy_from_launch" in r else "-",
          f"{r['ramp']:.1%}", f"{r['tail']:.1%}", round(r["first_request_s"], 1), round(r["wall_s"], 1),
          round(r["ideal_s"], 1), round(r["wall_vs_ideal"], 2) if r["wall_vs_ideal"] else "-",
          "yes" if r["ok"] else "NO"] for r in rows])
    slow = [r["busy"] for r in rows if r["L"] >= 1.0 and r["kind"] in ("captions", "negatives")] or \
        [r["busy"] for r in rows]
    ratio = min(slow) if slow else 0.0
    if not all(r["ok"] for r in rows):
        ratio = 0.0
    large = "" if args.quick or args.launch else f" ({max(n, args.n_large)} at 256 slots)"
    setup = (f"{n} synthetic images{large}; server: B slots x L s, FIFO, on 127.0.0.1 in the bench process, "
             f"{'no /metrics' if args.no_server_metrics else 'its queue at /metrics as vLLM reports it'}; pipeline "
             f"in a child process, stub engines for the other stages; concurrency: {args.concurrency} (auto: none "
             f"set, the adaptive default; sized: ceil(1.25 B / workers))"
             + (" (--quick)" if args.quick else ""))
    lines = f"saturation: ratio={ratio:.2f}"
    if args.launch:  # the goal: >= 90% busy from launch to the last answer
        ratio = min((r.get("busy_from_launch", 0.0) if r["ok"] else 0.0) for r in rows) if rows else 0.0
        lines = f"saturation_launch: ratio={ratio:.2f} (busy from launch to the last answer)"
        return publish(args, "Saturation from launch, default waves", "--launch of bench/saturation.py", setup,
                       table, lines)
    if baseline.get("8"):
        lines = (f"baseline (same run, captions in-process, B = 32, L = 1 s): fixed 8 in flight (the old default) "
                 f"{baseline['8']:.1%} busy, the default now {baseline.get('auto', 0.0):.1%}\n"
                 f"saturation_default: ratio={baseline.get('auto', 0.0) / baseline['8']:.2f}\n" + lines)
    return publish(args, "Saturation: how busy the pipeline keeps a model server", "bench/saturation.py", setup,
                   table, lines)


if __name__ == "__main__":
    sys.exit(main())
