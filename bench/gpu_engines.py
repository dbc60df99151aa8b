"""GPU engines: the vLLM negatives engine inside the pipeline vs vLLM called directly on the same prompts.

For a machine with a GPU and ``vllm`` installed. Both sides run in fresh processes on the same
model folder with ``load_format=dummy`` (real architecture, random weights: no download; the
folder needs only config.json and the tokenizer files):

- pipeline: the whole pipeline on ``--n`` synthetic scenes with ``--negatives vllm:MODEL?...``
  (stub captioner/detector). The registry's ``vllm`` entry is swapped, inside that process only,
  for :class:`CountingVllmNegatives`: the same engine, which also logs every ``generate`` call
  (expressions, seed, output tokens, seconds) and its load time to a jsonl file.
  By default that entry loads the engine in the worker process (``gpu=False``): with the
  registry's ``gpu=True`` RunInference hands ``apply_negatives`` a MultiProcessShared proxy, on
  which ``engine.provenance`` (an attribute) raises AttributeError and fails the job;
  ``--shared-model`` measures that path once it is fixed.
- direct: ``VllmNegatives`` built from the same spec replays exactly those requests (same
  prompts, same sampling params and seeds) in one ``LLM.chat`` call.

Tokens/s of the pipeline = output tokens / (pipeline run time - engine load time); of the direct
call = output tokens / chat time. Ends with ``gpu_engines: ratio=X.XX`` (pipeline / direct; goal
>= 0.85). Without CUDA or vllm it says why, prints ``gpu_engines: ratio=n/a (...)`` and exits 0.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import time
from typing import Any, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (bench_args, fresh_dir, make_input, markdown_table, publish,  # noqa: E402
                          pipeline_argv, run_child)

GOAL = 0.85
CALL_LOG_ENV = "FINEHARD_BENCH_VLLM_LOG"
MODEL_ENV = "FINEHARD_VLLM_MODEL"


def why_not_runnable(model: str, assume_gpu: bool = False) -> Optional[str]:
    """None when this machine can run the benchmark, else the short reason (for ``ratio=n/a (...)``)."""
    if not assume_gpu:
        try:
            import torch
        except ImportError:
            return "no GPU"
        if not torch.cuda.is_available():
            return "no GPU"
    if importlib.util.find_spec("vllm") is None:
        return "no vllm"
    if not model:
        return f"no model: pass --model DIR or set {MODEL_ENV}"
    return None


def engine_spec(model: str, max_tokens: int, gpu_memory_utilization: float, max_model_len: int) -> str:
    return (f"vllm:{model}?load_format=dummy&max_tokens={max_tokens}&gpu_memory_utilization={gpu_memory_utilization}"
            f"&max_model_len={max_model_len}&enforce_eager=false")


def _log(entry: dict[str, Any]) -> None:
    path = os.environ.get(CALL_LOG_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")


class _CountingLLM:
    """Wraps ``vllm.LLM``: ``chat`` counts output tokens and seconds of each call."""

    def __init__(self, llm: Any):
        self.llm = llm
        self.last: dict[str, Any] = {}

    def chat(self, conversations: Any, sampling_params: Any = None, **kwargs: Any) -> Any:
        t = time.perf_counter()
        outputs = self.llm.chat(conversations, sampling_params=sampling_params, **kwargs)
        seconds = time.perf_counter() - t
        tokens = sum(len(getattr(c, "token_ids", ()) or ()) for o in outputs for c in o.outputs)
        self.last = {"tokens": tokens, "seconds": seconds, "requests": len(outputs)}
        return outputs

    def __getattr__(self, name: str) -> Any:
        return getattr(self.llm, name)


def build_counting(spec: Any, **options: Any) -> Any:
    """Registry factory: the real vLLM engine, logging its calls (see module docstring)."""
    from stages.engines.negatives_vllm import VllmNegatives

    class CountingVllmNegatives(VllmNegatives):
        def __init__(self, spec: Any, **opts: Any):
            t = time.perf_counter()
            super().__init__(spec, **opts)
            self.llm = _CountingLLM(self.llm)
            _log({"load_s": time.perf_counter() - t})

        def generate(self, expressions: list[str], seed: int = 0) -> list[Any]:
            answers = super().generate(expressions, seed)
            _log({"expressions": list(expressions), "seed": seed, **self.llm.last})
            return answers

    return CountingVllmNegatives(spec, **options)


# The pipeline side: the registry's vllm entry is replaced by the counting factory in this process
# (and in the process that holds the shared model, which imports this module by the same name).
PIPELINE_CHILD = """
import json, sys, time, logging
logging.disable(logging.WARNING)
from core.engines import EngineEntry
from stages.negatives import NEGATIVE_ENGINES
old = NEGATIVE_ENGINES.entries["vllm"]
shared = sys.argv[2] == "shared"  # gpu=True: RunInference shares one model per machine (a proxy)
NEGATIVE_ENGINES.entries["vllm"] = EngineEntry("bench.gpu_engines:build_counting", old.needs_target, shared, old.help)
from pipeline.config import parse_config
from pipeline.run import run
t = time.perf_counter()
summary = run(parse_config(json.loads(sys.argv[1])))
from bench.common import child_report
child_report({"run_s": time.perf_counter() - t, "written": summary["written"], "regions": summary["regions"]})
"""

# The direct side: the same engine class, the same requests, one LLM.chat call.
DIRECT_CHILD = """
import json, sys, time
from core.engines import parse_spec
from bench.gpu_engines import _CountingLLM
from stages.engines.negatives_vllm import VllmNegatives
spec, calls = parse_spec(sys.argv[1]), [json.loads(l) for l in open(sys.argv[2]) if '"expressions"' in l]
engine = VllmNegatives(spec)
requests = [(e, c["seed"]) for c in calls for e in c["expressions"]]
conversations = [engine.prompt.messages(e) for e, _ in requests]
params = [engine.sampling_params(e, s) for e, s in requests]
llm = _CountingLLM(engine.llm)
llm.chat(conversations[:8], sampling_params=params[:8], use_tqdm=False)  # warm-up, as the pipeline's first batch
llm.chat(conversations, sampling_params=params, use_tqdm=False)
from bench.common import child_report
child_report(llm.last)
"""


def measure(n: int, seed: int, spec: str, python: str, batch_size: int, shared: bool = False) -> dict[str, Any]:
    manifest = make_input(n, seed)
    out = fresh_dir("gpu_engines")
    log = os.path.join(out, "vllm_calls.jsonl")
    env = {CALL_LOG_ENV: log}
    try:
        flags = pipeline_argv(manifest, os.path.join(out, "shards"), 1000,
                              ["--negatives", spec, "--negatives-retries", "0", "--batch-size", str(batch_size)])
        pipe_run = run_child([python, "-c", PIPELINE_CHILD, json.dumps(flags), "shared" if shared else "local"],
                             env=env, timeout=3600)
        if pipe_run.returncode != 0:
            raise RuntimeError(f"pipeline run failed:\n{pipe_run.stderr[-3000:]}")
        pipe = pipe_run.result()
        with open(log, encoding="utf-8") as f:
            entries = [json.loads(line) for line in f]
        direct_run = run_child([python, "-c", DIRECT_CHILD, spec, log], env=env, timeout=3600)
        if direct_run.returncode != 0:
            raise RuntimeError(f"direct run failed:\n{direct_run.stderr[-3000:]}")
        direct = direct_run.result()
    finally:
        shutil.rmtree(out, ignore_errors=True)
    calls = [e for e in entries if "expressions" in e]
    load_s = sum(e["load_s"] for e in entries if "load_s" in e)
    return {"pipe_run_s": pipe["run_s"], "load_s": load_s, "pipe_tokens": sum(c["tokens"] for c in calls),
            "pipe_chat_s": sum(c["seconds"] for c in calls), "calls": len(calls),
            "requests": sum(len(c["expressions"]) for c in calls), "written": pipe["written"],
            "direct_tokens": direct["tokens"], "direct_s": direct["seconds"]}


def add_flags(p: Any) -> None:
    p.add_argument("--model", default=os.environ.get(MODEL_ENV, ""),
                   help=f"local model folder (config + tokenizer; weights not needed: load_format=dummy); "
                        f"default ${MODEL_ENV}")
    p.add_argument("--max-tokens", type=int, default=256, help="max output tokens per request")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.8, help="vLLM gpu_memory_utilization")
    p.add_argument("--max-model-len", type=int, default=2048, help="vLLM max_model_len")
    p.add_argument("--batch-size", type=int, default=32,
                   help="pipeline --batch-size (the negatives stage batches twice this many records)")
    p.add_argument("--python", default=sys.executable, help="interpreter for both runs (one with beam and vllm)")
    p.add_argument("--shared-model", action="store_true",
                   help="load the engine as the registry says for GPU engines (share_model_across_processes: "
                        "a MultiProcessShared proxy); default: in the worker process (the proxy lacks .provenance, "
                        "see the module docstring)")
    p.add_argument("--assume-gpu", action="store_true",
                   help="skip the CUDA check (to exercise the script with a stand-in vllm package)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = bench_args(__doc__.splitlines()[0], 500, argv, add_flags)
    reason = why_not_runnable(args.model, args.assume_gpu)
    if reason:
        print(f"gpu_engines: skipped: {reason} (this benchmark needs a CUDA GPU, vllm and a model folder)")
        print(f"gpu_engines: ratio=n/a ({reason})")
        return 0
    spec = engine_spec(args.model, args.max_tokens, args.gpu_memory_utilization, args.max_model_len)
    m = measure(args.n, args.seed, spec, args.python, args.batch_size, args.shared_model)
    pipe_busy = m["pipe_run_s"] - m["load_s"]
    pipe_rate = m["pipe_tokens"] / pipe_busy if pipe_busy > 0 else 0.0
    direct_rate = m["direct_tokens"] / m["direct_s"] if m["direct_s"] > 0 else float("nan")
    ratio = pipe_rate / direct_rate if direct_rate else float("nan")
    rows = [
        ["pipeline (whole run minus engine load)", m["requests"], m["pipe_tokens"], pipe_busy, pipe_rate],
        ["  of which inside LLM.chat", m["requests"], m["pipe_tokens"], m["pipe_chat_s"],
         m["pipe_tokens"] / m["pipe_chat_s"] if m["pipe_chat_s"] else 0.0],
        ["vLLM direct (one LLM.chat)", m["requests"], m["direct_tokens"], m["direct_s"], direct_rate],
    ]
    lines = markdown_table(["run", "requests", "output tokens", "seconds", "tokens/s"], rows)
    lines.append("")
    lines.append(f"pipeline / direct tokens/s: {ratio:.2f} (goal >= {GOAL}: {'met' if ratio >= GOAL else 'MISSED'}); "
                 f"{m['calls']} generate calls in the pipeline, engine load {m['load_s']:.1f} s, "
                 f"{m['written']} samples written")
    ratio_line = f"gpu_engines: ratio={ratio:.2f}"
    setup = (f"n={args.n} synthetic scenes, spec {spec}, negatives retries 0, pipeline batch size "
             f"{args.batch_size}, model {'shared across processes' if args.shared_model else 'in the worker'}; direct replays the pipeline's requests (same prompts and seeds)")
    return publish(args, "vLLM negatives in the pipeline vs direct", "bench/gpu_engines.py", setup, lines, ratio_line)


if __name__ == "__main__":
    sys.exit(main())
