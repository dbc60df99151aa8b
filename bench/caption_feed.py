"""Caption feed: how many photo-sized images a second one local process sends to a captioner server.

The synthetic scenes of the other benchmarks are 256 x 256; a photo is megapixels, and opening,
resizing (to the captioner's ``max_side``, 1024) and JPEG-encoding it is the captioner's CPU work
per request. A server of ours with room for every request at once (bench/saturation.py's batch
server, ``--slots`` slots, ``--seconds`` per answer) takes them all, so the rate at which requests
arrive there is the pipeline's feed. Runs, each a whole local ``finehard shards --stages recaption``
in a child process on the same input:

- ``1 thread``: the caption jobs built on one thread (what the stage did before the build pool);
- ``default``: ``transforms.window.BUILD_THREADS`` threads (``min(8, cores)``).

Ends with ``caption_feed: ratio=X.XX`` (default / one thread, images a second).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import sys
from typing import Any, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (INPUT_CACHE, bench_args, fresh_dir, markdown_table, publish,  # noqa: E402
                          python_child, run_child)
from bench.saturation import BatchServer  # noqa: E402

CHILD = """
import json, sys, logging
logging.disable(logging.WARNING)
import transforms.recaption as recaption
if sys.argv[2] != "default":
    recaption.BUILD_THREADS = int(sys.argv[2])
from pipeline.config import parse_config
from pipeline.run import run
summary = run(parse_config(json.loads(sys.argv[1])))
from bench.common import child_report
child_report({"read": summary["read"], "written": summary["written"], "reconciled": summary["reconciled"],
              "threads": recaption.BUILD_THREADS})
"""


def photos(n: int, width: int, height: int, seed: int) -> str:
    """A manifest of ``n`` photo-like JPEGs (smooth colour fields, quality 90), cached per size and seed."""
    import numpy as np
    from PIL import Image, ImageFilter

    folder = os.path.join(INPUT_CACHE, f"photos_n{n}_{width}x{height}_s{seed}")
    manifest = os.path.join(folder, "manifest.jsonl")
    if os.path.exists(os.path.join(folder, ".complete")):
        return manifest
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    with open(manifest, "w") as out:
        for i in range(n):
            field = (rng.random((height // 8, width // 8, 3)) * 255).astype("uint8")
            image = Image.fromarray(field).resize((width, height), Image.Resampling.BICUBIC)
            buf = io.BytesIO()
            image.filter(ImageFilter.GaussianBlur(2)).save(buf, format="JPEG", quality=90)
            path = os.path.join(folder, f"photo_{i:05d}.jpg")
            with open(path, "wb") as f:
                f.write(buf.getvalue())
            out.write(json.dumps({"url": path}) + "\n")
    open(os.path.join(folder, ".complete"), "w").close()
    return manifest


def run_once(manifest: str, n: int, threads: str, slots: int, seconds: float) -> dict[str, Any]:
    out = fresh_dir("caption_feed")
    try:
        with BatchServer(slots, seconds) as server:
            flags = ["--input", manifest, "--output", out, "--wave-samples", "0", "--no-dedup", "--stages",
                     "recaption", "--captioner", f"openai:{server.url}?warmup=30#sim", "--caption-concurrency",
                     str(slots), "--model-cache", "none"]
            run = run_child(python_child(CHILD, json.dumps(flags), threads))
            if run.returncode != 0:
                raise RuntimeError(f"run failed:\n{run.stderr[-3000:]}")
            result = run.result()
            arrivals = sorted(a for a, _, _ in server.log)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else 0.0
    return {"threads": result["threads"], "requests": len(arrivals), "feed": (len(arrivals) - 1) / span if span else 0.0,
            "wall_s": run.wall_s, "ok": result["written"] == result["read"] == n and result["reconciled"] is True}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = bench_args(__doc__.splitlines()[0], 240, argv,
                      lambda p: (p.add_argument("--width", type=int, default=1600),
                                 p.add_argument("--height", type=int, default=1200),
                                 p.add_argument("--slots", type=int, default=1000,
                                                help="server slots (at least --n: every request is taken at once)"),
                                 p.add_argument("--seconds", type=float, default=1.0, help="seconds per answer")))
    manifest = photos(args.n, args.width, args.height, args.seed)
    rows = []
    for label, threads in (("1 thread", "1"), ("default", "default")):
        r = run_once(manifest, args.n, threads, max(args.slots, args.n), args.seconds)
        rows.append({"run": label, **r})
        print(f"{label}: {r['threads']} build thread(s), {r['feed']:.1f} images/s reach the server, "
              f"{r['requests']} requests, wall {r['wall_s']:.1f} s, {'ok' if r['ok'] else 'LOST SAMPLES'}", flush=True)
    table = markdown_table(["run", "build threads", "requests", "images/s at the server", "wall s", "all written"],
                           [[r["run"], r["threads"], r["requests"], round(r["feed"], 1), round(r["wall_s"], 1),
                             "yes" if r["ok"] else "NO"] for r in rows])
    ratio = rows[1]["feed"] / rows[0]["feed"] if rows[0]["feed"] and all(r["ok"] for r in rows) else 0.0
    setup = (f"{args.n} photo-like JPEGs of {args.width} x {args.height} (quality 90); captioner: openai: against "
             f"bench/saturation.py's server with {max(args.slots, args.n)} slots x {args.seconds} s (room for every "
             f"request); `--stages recaption --no-dedup --wave-samples 0`, in-process, max_side 1024")
    return publish(args, "Caption feed: photo-sized images a second from one process", "bench/caption_feed.py",
                   setup, table, f"caption_feed: ratio={ratio:.2f}")


if __name__ == "__main__":
    sys.exit(main())
