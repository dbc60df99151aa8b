"""`make gpu-check`: everything that needs a CUDA GPU, in one run of <= 8 minutes on a one-GPU machine.

One line per check (``gpu-check: NAME: ok|FAIL (...)``) and a last summary line:

1. ``cuda-tests``: the test suite's CUDA tests (they skip on a CPU machine).
2. ``shards``: the bundled sample curated with the stub engines (CPU) into shards for the next two.
3. ``stage1-bf16`` / ``stage2-bf16``: 20 bf16 steps of each FG-CLIP stage on those shards
   (``--model config:vit-b-16`` random init, then stage 2 from stage 1's ``final/``): samples/s and
   peak GPU memory (``torch.cuda.max_memory_allocated``).
4. ``yolo-world-cuda``: the pipeline with YOLO-World on CUDA, random weights (ultralytics'
   ``yolov8s-worldv2.yaml``) and a random tiny CLIP text tower: images/s and GPU memory.
5. ``vllm-pipeline``: the pipeline with a vLLM captioner and vLLM negatives on dummy weights: a
   tiny Qwen2-VL (config, tokenizer, processor written here; ``--load-format dummy``) served by
   ``vllm serve`` from its own venv (vLLM's pins conflict with Beam's, so it never shares the
   pipeline's environment; ``--vllm-venv``, default ``.venv-vllm``, created with ``pip install vllm``
   when missing and the network allows), reached through the ``openai:`` engines: captions/s and GPU memory.

GPU memory of other processes (server, pipeline) is the peak of ``nvidia-smi``'s used memory
above the level before the check. On a machine without a CUDA GPU it says so and exits 0.
Exit status: 0 when every check passed (or no GPU), 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any, Callable, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
STEPS = 20
VLLM_VERSION = os.environ.get("FINEHARD_VLLM_VERSION", "")  # pin one (e.g. 0.11.0) for reproducible checks
CHECK_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "YOLO_OFFLINE": "1", "PYTHONPATH": ROOT,
             "YOLO_CONFIG_DIR": os.path.join(tempfile.gettempdir(), "finehard-yolo-config")}


class CheckFailed(Exception):
    """A check did not pass; the message is the reason (one line)."""


def cuda_status() -> tuple[bool, str]:
    """(whether a CUDA GPU is usable, a description)."""
    try:
        import torch
    except ImportError:
        return False, "torch is not installed"
    if not torch.cuda.is_available():
        return False, f"torch {torch.__version__}: torch.cuda.is_available() is False"
    return True, f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}"


def run(cmd: list[str], timeout: float, env: Optional[dict[str, str]] = None, cwd: str = ROOT) -> str:
    """Run ``cmd``; its stdout, or CheckFailed with the last line of its output."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, env={**os.environ, **CHECK_ENV, **(env or {})}, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"timed out after {timeout:.0f} s: {' '.join(cmd[:4])} ...")
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1][:300]
        raise CheckFailed(f"exit {proc.returncode}: {tail}")
    return proc.stdout


class GpuMemory:
    """Peak of nvidia-smi's used memory (MiB) while the ``with`` block runs, above the level at its start."""

    def __init__(self, every_s: float = 0.25) -> None:
        self.every_s, self.peak, self.base = every_s, 0, 0
        self._stop = threading.Event()

    @staticmethod
    def used_mib() -> int:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                                 capture_output=True, text=True, timeout=10).stdout
            return int(out.strip().splitlines()[0])
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            return 0

    def _poll(self) -> None:
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, self.used_mib())

    def __enter__(self) -> "GpuMemory":
        self.base = self.peak = self.used_mib()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def gib(self) -> float:
        return max(0, self.peak - self.base) / 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pipeline(work: str, name: str, *engine_args: str, timeout: float = 240) -> dict[str, Any]:
    """Curate the bundled sample into ``work/name`` with ``engine_args``; its summary plus the wall time."""
    out = os.path.join(work, name)
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.time()
    run([PY, "-m", "pipeline", "shards", "--input", os.path.join(ROOT, "sample", "manifest.jsonl"), "--output", out,
         "--samples-per-shard", "8", "--progress-every-s", "0", *engine_args], timeout)
    with open(os.path.join(out, "summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    summary["wall_s"] = time.time() - t0
    summary["output"] = out
    return summary


# --- checks ---------------------------------------------------------------------------------------

def check_cuda_tests(ctx: dict[str, Any]) -> str:
    tests = ["tests/test_training_train.py", "tests/test_training_roi.py"]
    out = run([PY, "-m", "pytest", "-q", "-k", "cuda", *tests], timeout=240)
    return out.strip().splitlines()[-1] if out.strip() else "no output"


def check_shards(ctx: dict[str, Any]) -> str:
    s = pipeline(ctx["work"], "shards-stub")
    if not s.get("written"):
        raise CheckFailed(f"no samples written: {s}")
    ctx["shards"] = s["output"]
    return f"{s['written']} samples, {s.get('regions', '?')} regions in {s['wall_s']:.0f} s"


TRAIN_CHILD = ("import json, sys, torch\n"
               "from training.cli import train_main\n"
               "rc = train_main(sys.argv[1:])\n"
               "print(json.dumps({'rc': rc, 'peak_gib': torch.cuda.max_memory_allocated() / 2**30}))\n"
               "sys.exit(rc)\n")


def _train(ctx: dict[str, Any], stage: int, model: str) -> str:
    if "shards" not in ctx:
        raise CheckFailed("needs the shards check")
    out = os.path.join(ctx["work"], f"stage{stage}")
    shutil.rmtree(out, ignore_errors=True)
    batch = ctx["batch"]
    stdout = run([PY, "-c", TRAIN_CHILD, "--stage", str(stage), "--device", "cuda", "--model", model,
                  "--shards", ctx["shards"], "--output", out, "--steps", str(STEPS), "--batch-size", str(batch),
                  "--precision", "bf16", "--warmup-steps", "0", "--log-every", "1", "--save-every", "0",
                  "--log-level", "WARNING"], timeout=300)
    peak = json.loads(stdout.strip().splitlines()[-1])["peak_gib"]
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"), encoding="utf-8")]
    if len(rows) != STEPS or not all(r["loss"] == r["loss"] and abs(r["loss"]) < 1e4 for r in rows):
        raise CheckFailed(f"{len(rows)} metric rows, losses {[round(r['loss'], 3) for r in rows][:5]}...")
    first, last = rows[0], rows[-1]
    rate = (STEPS - 1) * batch / max(1e-9, last["elapsed_s"] - first["elapsed_s"])
    ctx[f"stage{stage}"] = os.path.join(out, "final")
    extra = f", regional {last['regional']:.3f}, hard {last['hard']:.3f}" if stage == 2 else ""
    return (f"{STEPS} steps x {batch}, {rate:.0f} samples/s (steps 2-{STEPS}), peak GPU memory {peak:.1f} GiB, "
            f"loss {first['loss']:.3f} -> {last['loss']:.3f}{extra}")


def check_stage1(ctx: dict[str, Any]) -> str:
    return _train(ctx, 1, "config:vit-b-16")


def check_stage2(ctx: dict[str, Any]) -> str:
    if "stage1" not in ctx:
        raise CheckFailed("needs the stage1-bf16 check")
    return _train(ctx, 2, ctx["stage1"])


YOLO_CHILD = ("import sys\n"
              "from ultralytics import YOLOWorld\n"
              "YOLOWorld('yolov8s-worldv2.yaml').save(sys.argv[1])\n")


def write_clip_text_tower(folder: str) -> str:
    """A random-init 512-d CLIP text tower with a letters-only tokenizer (YOLO-World v2's text width)."""
    import string

    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    os.makedirs(folder, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
    tok = CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"))
    cfg = CLIPTextConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, projection_dim=512, bos_token_id=0,
                         eos_token_id=1, pad_token_id=1)
    out = os.path.join(folder, "clip")
    CLIPTextModelWithProjection(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def check_yolo_world(ctx: dict[str, Any]) -> str:
    folder = os.path.join(ctx["work"], "yolo")
    os.makedirs(folder, exist_ok=True)
    weights = os.path.join(folder, "yolov8s-worldv2-random.pt")
    run([PY, "-c", YOLO_CHILD, weights], timeout=120, cwd=folder)
    clip = write_clip_text_tower(folder)
    with GpuMemory() as mem:
        s = pipeline(ctx["work"], "shards-yolo", "--detector",
                     f"yolo-world:{weights}?device=cuda:0&min_conf=0.0#text={clip}")
    if s.get("dead_lettered"):
        raise CheckFailed(f"{s['dead_lettered']} samples dead-lettered: {s.get('dead_letter_reasons', '')}")
    return (f"{s['written']} images, {s.get('regions', 0)} regions, {s['written'] / s['wall_s']:.1f} images/s "
            f"(whole run, start-up included), GPU memory {mem.gib:.2f} GiB")


SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] in ('image', 'image_url') %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def write_tiny_vlm(folder: str) -> str:
    """A tiny Qwen2-VL folder (config, byte-level BPE tokenizer with Qwen's special tokens, processor): no weights,
    for ``--load-format dummy``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    os.makedirs(folder, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    words = ("a photo of the red green blue small large dog cat person car tree sky wall on in with and "
             "describe this image detail negatives json expression object left right").split()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(words)] * 50, trainer)
    ids = {t: tok.token_to_id(t) for t in SPECIALS}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    cfg_path = os.path.join(folder, "tokenizer_config.json")
    with open(cfg_path, encoding="utf-8") as f:
        tcfg = json.load(f)
    tcfg["tokenizer_class"] = "Qwen2Tokenizer"  # what Qwen2VLProcessor loads (from tokenizer.json)
    tcfg["chat_template"] = CHAT_TEMPLATE
    with open(cfg_path, "w", encoding="utf-8") as f:
        json.dump(tcfg, f)
    vocab = ((tok.get_vocab_size() + 63) // 64) * 64
    config = {"architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl",
              "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "vocab_size": vocab, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
              "rope_theta": 1000000.0, "rope_scaling": {"type": "mrope", "mrope_section": [8, 12, 12]},
              "hidden_act": "silu", "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_cache": True,
              "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
              "image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
              "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
              "vision_config": {"depth": 2, "embed_dim": 64, "hidden_size": 256, "num_heads": 4, "mlp_ratio": 2,
                                "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "in_chans": 3}}
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=1)
    with open(os.path.join(folder, "generation_config.json"), "w", encoding="utf-8") as f:
        json.dump({"eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"]}, f)
    processor = {"image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor",
                 "min_pixels": 56 * 56, "max_pixels": 224 * 224, "patch_size": 14, "temporal_patch_size": 2,
                 "merge_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
                 "image_std": [0.26862954, 0.26130258, 0.27577711], "do_resize": True, "do_normalize": True,
                 "do_rescale": True, "rescale_factor": 1 / 255}
    with open(os.path.join(folder, "preprocessor_config.json"), "w", encoding="utf-8") as f:
        json.dump(processor, f, indent=1)
    return folder


def vllm_venv(path: str) -> str:
    """The vLLM venv's python: ``path`` if it has vllm, else a new venv there with ``pip install vllm``."""
    py = os.path.join(path, "bin", "python")
    if os.path.isfile(py) and subprocess.run([py, "-c", "import vllm"], capture_output=True).returncode == 0:
        return py
    print(f"gpu-check: vllm-pipeline: creating vLLM's own venv at {path} (its pins conflict with Beam's): "
          f"pip install vllm{'==' + VLLM_VERSION if VLLM_VERSION else ''}", flush=True)
    run([sys.executable, "-m", "venv", path], timeout=120)
    try:
        run([py, "-m", "pip", "install", "-q", "vllm" + ("==" + VLLM_VERSION if VLLM_VERSION else "")], timeout=600)
    except CheckFailed as exc:
        raise CheckFailed(f"no vLLM venv and pip could not install vllm into {path} ({exc}); create it elsewhere "
                          f"(python -m venv {path} && {path}/bin/pip install vllm) and copy it here")
    return py


def wait_for_server(url: str, proc: subprocess.Popen, timeout: float) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise CheckFailed(f"vllm serve exited with {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(url + "/models", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise CheckFailed(f"vllm serve did not answer {url} within {timeout:.0f} s")


def check_vllm(ctx: dict[str, Any]) -> str:
    py = vllm_venv(ctx["vllm_venv"])
    model = write_tiny_vlm(os.path.join(ctx["work"], "tiny-qwen2-vl"))
    port = free_port()
    log_path = os.path.join(ctx["work"], "vllm-serve.log")
    cmd = [py, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--served-model-name", "tiny-vlm",
           "--load-format", "dummy", "--port", str(port), "--host", "127.0.0.1", "--max-model-len", "2048",
           "--gpu-memory-utilization", "0.3", "--enforce-eager", "--limit-mm-per-prompt", '{"image": 1}']
    url = f"http://127.0.0.1:{port}/v1"
    with GpuMemory() as mem, open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        try:
            try:
                wait_for_server(url, proc, timeout=240)
            except CheckFailed as exc:
                with open(log_path, encoding="utf-8") as f:
                    tail = [line.strip() for line in f if line.strip()][-1:] or [""]
                raise CheckFailed(f"{exc}; last log line: {tail[0][:200]} (full log: {log_path})")
            s = pipeline(ctx["work"], "shards-vllm", "--captioner", f"openai:{url}#tiny-vlm",
                         "--negatives", f"openai:{url}#tiny-vlm", timeout=240)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    captioned = s.get("written", 0) + s.get("dead_lettered", 0)
    return (f"{s.get('written', 0)} written, {s.get('dead_lettered', 0)} dead-lettered (random weights: captions "
            f"are noise), {captioned / s['wall_s']:.1f} captions/s (whole pipeline), vLLM server GPU memory "
            f"{mem.gib:.1f} GiB (--gpu-memory-utilization 0.3 reserves most of it)")


CHECKS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("cuda-tests", check_cuda_tests), ("shards", check_shards), ("stage1-bf16", check_stage1),
    ("stage2-bf16", check_stage2), ("yolo-world-cuda", check_yolo_world), ("vllm-pipeline", check_vllm)]


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", default=None, help=f"run only these checks: {[n for n, _ in CHECKS]}")
    p.add_argument("--vllm-venv", default=os.environ.get("FINEHARD_VLLM_VENV", os.path.join(ROOT, ".venv-vllm")),
                   help="vLLM's own venv (created with pip install vllm when missing)")
    p.add_argument("--batch", type=int, default=64, help="per-device batch of the training checks")
    p.add_argument("--work", default=None, help="work folder (default: a temporary one, removed after)")
    args = p.parse_args(argv)
    ok, what = cuda_status()
    if not ok:
        print(f"gpu-check: no CUDA GPU on this machine ({what}): nothing checked; run `make gpu-check` on a machine "
              f"with one GPU")
        return 0
    print(f"gpu-check: {what}", flush=True)
    work = args.work or tempfile.mkdtemp(prefix="finehard-gpu-check-")
    ctx: dict[str, Any] = {"work": work, "vllm_venv": args.vllm_venv, "batch": args.batch}
    failed, t_all = [], time.time()
    try:
        for name, fn in CHECKS:
            if args.only is not None and name not in args.only:
                continue
            t0 = time.time()
            try:
                result = fn(ctx)
                print(f"gpu-check: {name}: ok ({time.time() - t0:.0f} s) {result}", flush=True)
            except CheckFailed as exc:
                failed.append(name)
                print(f"gpu-check: {name}: FAIL ({time.time() - t0:.0f} s) {exc}", flush=True)
            except Exception as exc:  # noqa: BLE001 - one line per check, whatever broke
                failed.append(name)
                print(f"gpu-check: {name}: FAIL ({time.time() - t0:.0f} s) {type(exc).__name__}: "
                      f"{str(exc).splitlines()[0] if str(exc) else ''}", flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"gpu-check: {'all passed' if not failed else 'FAILED: ' + ', '.join(failed)} "
          f"in {time.time() - t_all:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
