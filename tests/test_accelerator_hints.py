"""Every GPU stage of the Dataflow-shaped graph carries Beam's accelerator hint (``--gpu-accelerator``)."""
import apache_beam as beam

from core.run_config import LaunchPlan
from pipeline.config import parse_config
from transforms.graph import build_pipeline

HINT = "type:nvidia-l4;count:1;install-nvidia-driver"


def _hints_by_step(argv: list[str]) -> dict[str, set[bytes]]:
    """{transform label: accelerator hints of its environment} of the whole graph a remote runner gets."""
    config = parse_config([*argv, "--runner", "DataflowRunner"])  # built, never run
    p = beam.Pipeline()
    build_pipeline(p, config, LaunchPlan(0, frozenset(), None), spill_root="/tmp/finehard-spill-unused")
    proto = p.to_runner_api()
    envs = proto.components.environments
    out: dict[str, set[bytes]] = {}
    for t in proto.components.transforms.values():
        env = envs.get(t.environment_id) if t.environment_id else None
        hints = {v for k, v in env.resource_hints.items() if "accelerator" in k} if env else set()
        out.setdefault(t.unique_name, set()).update(hints)
    return out


def _step(hints: dict[str, set[bytes]], name: str) -> set[bytes]:
    found = {k: v for k, v in hints.items() if k.startswith(name + "/")}
    assert found, f"no {name} step in {sorted(hints)[:20]}"
    return set().union(*found.values())


def test_the_vllm_negatives_step_gets_the_accelerator_hint_in_the_dataflow_graph(tmp_path):
    argv = ["--input", "sample/manifest.jsonl", "--output", str(tmp_path / "out"), "--captioner", "stub",
            "--detector", "stub", "--negatives", "vllm:/w/llama-3-8b", "--gpu-accelerator", HINT]
    hints = _hints_by_step(argv)
    assert _step(hints, "Negatives") == {HINT.encode()}
    assert _step(hints, "Recaption") == set() and _step(hints, "Detect") == set()  # stub engines: CPU


def test_every_gpu_stage_gets_the_hint_and_cpu_engines_none(tmp_path):
    argv = ["--input", "sample/manifest.jsonl", "--output", str(tmp_path / "out"),
            "--captioner", "vllm:/w/Qwen2-VL-2B-Instruct", "--detector", "yolo-world:/w/yolov8s-worldv2.pt",
            "--negatives", "vllm:/w/llama-3-8b", "--gpu-accelerator", HINT]
    hints = _hints_by_step(argv)
    for step in ("Recaption", "Detect", "Negatives"):
        assert _step(hints, step) == {HINT.encode()}, step
    cpu = ["--input", "sample/manifest.jsonl", "--output", str(tmp_path / "out2"), "--negatives",
           "openai:http://127.0.0.1:9/v1#m", "--gpu-accelerator", HINT]
    assert _step(_hints_by_step(cpu), "Negatives") == set()  # a server's client: the GPU is the server's
