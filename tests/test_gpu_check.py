"""`make gpu-check` on a machine without a CUDA GPU says so and exits 0; its tiny dummy-weight VLM is consistent."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_check_without_a_gpu_says_so_in_one_line_and_exits_0():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "gpu_check.py")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no CUDA GPU on this machine")
    assert "make gpu-check" in lines[0]


def test_the_makefile_runs_the_script():
    text = open(os.path.join(ROOT, "Makefile"), encoding="utf-8").read()
    assert "gpu-check:" in text and "scripts/gpu_check.py" in text


def test_the_tiny_qwen2_vl_it_writes_loads_and_generates_with_transformers(tmp_path):
    """The folder vllm serve gets with --load-format dummy: processor, chat template and config agree."""
    import torch
    from PIL import Image
    from transformers import AutoConfig, AutoProcessor, Qwen2VLForConditionalGeneration

    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from gpu_check import write_tiny_vlm

    folder = write_tiny_vlm(str(tmp_path / "tiny"))
    proc = AutoProcessor.from_pretrained(folder)
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                                                                      "text": "describe"}]}],
                                    add_generation_prompt=True)
    assert "<|image_pad|>" in text and text.endswith("<|im_start|>assistant\n")
    inputs = proc(text=[text], images=[Image.new("RGB", (120, 90), "red")], return_tensors="pt")
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration._from_config(AutoConfig.from_pretrained(folder)).eval()
    out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 2
