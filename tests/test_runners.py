"""Runner options and runners that need no cloud: validation, portable proto, multi-process, portable job API."""
from __future__ import annotations

import hashlib
import pathlib

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.transforms import environments

from conftest import read_shards, run_pipeline
from core.run_config import LaunchPlan
from pipeline.config import parse_config
from transforms.graph import build_pipeline
from pipeline.submit import RunnerOptionsError, gpu_engines, validate_runner_options

SAMPLE = pathlib.Path(__file__).resolve().parents[1] / "sample" / "manifest.jsonl"
DATAFLOW = ["--runner=DataflowRunner", "--project=finehard-test-123", "--region=us-central1",
            "--temp_location=gs://finehard-test-bucket/tmp", "--setup_file=./setup.py"]
GPU_DATAFLOW = DATAFLOW + ["--sdk_container_image=us-docker.pkg.dev/finehard-test-123/images/finehard-gpu:0.1.0",
                           "--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver",
                           "--experiments=use_runner_v2", "--experiments=no_use_multiple_sdk_containers"]
FLINK = ["--runner=FlinkRunner", "--flink_master=flink-jm:8081", "--flink_version=1.19", "--environment_type=DOCKER",
         "--environment_config=apache/beam_python3.11_sdk:2.77.0", "--setup_file=./setup.py"]
STUBS = {"captioner": "stub", "detector": "stub", "negatives": "rules"}
GPU = {"captioner": "vllm:/models/qwen2-vl", "detector": "yolo-world:/w/yolov8s-worldv2.pt", "negatives": "stub"}


@pytest.mark.parametrize("argv,engines,needle", [
    (["--runner=DataflowRunner"], STUBS, "--project"),
    (["--runner=DataflowRunner"], STUBS, "--region"),
    (["--runner=DataflowRunner"], STUBS, "--temp_location"),
    (["--runner=DataflowRunner"], STUBS, "--setup_file ./setup.py"),
    ([a for a in DATAFLOW if "temp" not in a] + ["--temp_location=/tmp/x"], STUBS, "must be a gs:// path"),
    (DATAFLOW, GPU, "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"),
    (DATAFLOW, GPU, "--sdk_container_image"),
    (["--runner=FlinkRunner"], STUBS, "--flink_master=HOST:8081"),
    (["--runner=FlinkRunner", "--flink_master=h:8081", "--flink_job_server_jar=/nowhere/job-server.jar"], STUBS,
     "/nowhere/job-server.jar does not exist"),
    (["--runner=FlinkRunner", "--flink_master=h:8081", "--flink_version=1.19", "--environment_type=PROCESS"], STUBS,
     "/opt/apache/beam/boot"),
    # Beam 2.77 picks the Flink 2.2 job server unless told: the version must be said
    ([a for a in FLINK if "flink_version" not in a], STUBS, "beam-runners-flink-2.2-job-server-2.77.0.jar"),
    ([a for a in FLINK if "flink_version" not in a], STUBS, "--flink_version (1.19|1.20|2.0|2.1|2.2)"),
    (FLINK + ["--flink_job_server_jar=/j/beam-runners-flink-1.20-job-server-2.77.0.jar"], STUBS,
     "built for Flink 1.20 but --flink_version is 1.19"),
    (FLINK + ["--flink_job_server_jar=/j/beam-runners-flink-1.19-job-server-2.60.0.jar"], STUBS, "is for Beam 2.60.0"),
    ([a for a in FLINK if "environment" not in a], STUBS, "--environment_type=DOCKER --environment_config=IMAGE"),
    ([a for a in FLINK if "environment_type" not in a] + ["--environment_type=LOOPBACK"], STUBS, "LOOPBACK runs"),
    ([a for a in FLINK if "setup_file" not in a], STUBS, "lacks this project: add --setup_file ./setup.py"),
    ([a for a in FLINK if "environment_config" not in a] + ["--environment_config=apache/beam_python3.10_sdk:2.77.0"],
     STUBS, "runs Python 3.10; the launcher runs 3.11"),
    ([a for a in FLINK if "environment_config" not in a] + ["--environment_config=apache/beam_python3.11_sdk:2.71.0"],
     STUBS, "is Beam 2.71.0"),
    (["--runner=PortableRunner"], STUBS, "--job_endpoint"),
])
def test_bad_runner_options_fail_with_the_fix(argv: list[str], engines: dict, needle: str) -> None:
    with pytest.raises(RunnerOptionsError) as err:
        validate_runner_options(argv, engines)
    assert needle in str(err.value)


def test_dataflow_gpus_come_from_the_service_option_or_right_fitting_not_both() -> None:
    hint = "type:nvidia-l4;count:1;install-nvidia-driver"
    right_fitting = [a for a in GPU_DATAFLOW if "worker_accelerator" not in a]
    validate_runner_options(right_fitting, GPU, gpu_accelerator=hint)  # GPUs only for the model steps
    validate_runner_options(GPU_DATAFLOW, GPU)  # GPUs on every worker
    with pytest.raises(RunnerOptionsError) as err:  # Dataflow: right fitting must not meet worker_accelerator
        validate_runner_options(GPU_DATAFLOW, GPU, gpu_accelerator=hint)
    assert "cannot be combined" in str(err.value)
    with pytest.raises(RunnerOptionsError) as err:
        validate_runner_options(right_fitting, GPU)
    assert "--gpu-accelerator" in str(err.value) and "worker_accelerator" in str(err.value)


def test_dataflow_refuses_folders_on_the_launching_machine() -> None:
    shared = {"--input": "gs://b/in/", "--output": "gs://b/out", "--spill-dir": "auto", "--model-cache": None}
    validate_runner_options(DATAFLOW, STUBS, paths=shared)
    for flag, value in (("--output", "/tmp/out"), ("--spill-dir", "/mnt/spill"), ("--model-cache", "file:///c"),
                        ("--input", "sample/manifest.jsonl")):
        with pytest.raises(RunnerOptionsError) as err:
            validate_runner_options(DATAFLOW, STUBS, paths={**shared, flag: value})
        assert f"{flag} {value} is a path on this machine" in str(err.value) and "gs://" in str(err.value)
    with pytest.raises(RunnerOptionsError) as err:  # Flink: only under a declared shared mount
        validate_runner_options(FLINK, STUBS, paths={**shared, "--output": "/nfs/out"})
    assert "--output /nfs/out is a path on this machine, which Flink workers cannot reach" in str(err.value)
    assert "--shared-mount" in str(err.value)
    validate_runner_options(FLINK, STUBS, paths={**shared, "--output": "/nfs/out"}, shared_mounts=["/nfs"])
    image_only = [a for a in FLINK if "setup_file" not in a and "environment_config" not in a]
    # our own image carries the project: no --setup_file needed
    validate_runner_options(image_only + ["--environment_config=REGISTRY/finehard-gpu:0.1.0"], STUBS, paths=shared)


@pytest.mark.parametrize("argv,engines", [
    (DATAFLOW, STUBS), (GPU_DATAFLOW, GPU), (FLINK, STUBS), (FLINK, GPU), ([], GPU),
    (["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK"], STUBS),
])
def test_good_runner_options_pass(argv: list[str], engines: dict) -> None:
    options = validate_runner_options(argv, engines)
    assert isinstance(options, PipelineOptions)


def test_gpu_engines_are_the_model_specs() -> None:
    assert gpu_engines(GPU) == ["vllm:/models/qwen2-vl", "yolo-world:/w/yolov8s-worldv2.pt"]
    assert gpu_engines({"captioner": "openai:http://vllm:8000/v1#m", "detector": "stub", "negatives": "rules"}) == []
    # llama.cpp runs in the worker's process on its CPU (a CPU build): no accelerator asked for
    assert gpu_engines({"captioner": "stub", "detector": "stub", "negatives": "llama-cpp:/m/x.gguf"}) == []


def test_the_registry_is_the_one_place_that_says_gpu_or_not() -> None:
    from pipeline.submit import ENGINE_REGISTRIES

    for role, registry in ENGINE_REGISTRIES.items():
        for kind, entry in registry.entries.items():
            raw = kind + (":/x" if entry.needs_target else "")
            assert (gpu_engines({role: raw}) == [raw]) is entry.gpu, (role, kind)


def _proto_round_trip(beam_args: list[str], environment: environments.Environment) -> tuple:
    config = parse_config(["--input", str(SAMPLE), "--output", "/tmp/finehard-never-written", *beam_args])
    options = validate_runner_options(list(config.beam_args), {"captioner": config.captioner,
                                                               "detector": config.detector,
                                                               "negatives": config.negatives})
    p = beam.Pipeline(runner=FnApiRunner(), options=options)  # built, never run
    build_pipeline(p, config, LaunchPlan(0, frozenset(), None))
    proto = p.to_runner_api(default_environment=environment)
    again = beam.Pipeline.from_runner_api(proto, runner=FnApiRunner(), options=options).to_runner_api(
        default_environment=environment)
    return proto, again


def _names(proto) -> set[str]:
    return {t.unique_name for t in proto.components.transforms.values()}


@pytest.mark.parametrize("beam_args", [GPU_DATAFLOW, FLINK], ids=["dataflow", "flink"])
def test_pipeline_translates_to_the_portable_proto(beam_args: list[str]) -> None:
    options = PipelineOptions(beam_args)
    env = environments.DockerEnvironment.from_options(options.view_as(PortableOptions)) \
        if "--runner=FlinkRunner" in beam_args else \
        environments.DockerEnvironment.from_container_image(options.get_all_options()["sdk_container_image"])
    proto, again = _proto_round_trip(beam_args, env)
    # SpillImages: on these runners records cross the shuffles without the bytes they can read again
    stages = {"ReadImages", "SpillImages", "Recaption", "Expressions", "Detect", "Negatives", "WriteShards"}
    assert stages <= _names(proto)
    assert _names(again) == _names(proto)
    assert len(again.components.pcollections) == len(proto.components.pcollections)
    images = {e.urn: e.payload for e in proto.components.environments.values()}
    expected = "finehard-gpu:0.1.0" if "--runner=DataflowRunner" in beam_args else "beam_python3.11_sdk:2.77.0"
    assert any(expected.encode() in payload for payload in images.values()), images


def _hashes(out: pathlib.Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.tar"))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("ref") / "out"
    run_pipeline(SAMPLE, out, "--samples-per-shard", "8")
    return out


@pytest.mark.parametrize("beam_args", [
    ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK"],
], ids=["direct-multiprocess", "portable-loopback"])
def test_other_runners_write_the_same_shards(beam_args: list[str], reference: pathlib.Path,
                                             tmp_path: pathlib.Path) -> None:
    out = tmp_path / "out"
    summary = run_pipeline(SAMPLE, out, "--samples-per-shard", "8", *beam_args)
    assert summary["read"] == 29 and summary["written"] == 28 and summary["reconciled"]
    assert len(read_shards(out)) == 28
    assert _hashes(out) == _hashes(reference)  # byte-identical to the in-process run


@pytest.mark.parametrize("typed,name", [
    ("DaskRunner", "DaskRunner"), ("dask", "DaskRunner"), ("DASK", "DaskRunner"), ("FlinkRunner", "FlinkRunner"),
    ("flink", "FlinkRunner"), ("DataflowRunner", "DataflowRunner"), ("dataflow", "DataflowRunner"),
    ("dataflowrunner", "DataflowRunner"), ("PortableRunner", "PortableRunner"), ("portable", "PortableRunner"),
    ("DirectRunner", "DirectRunner"), ("direct", "DirectRunner"), ("Direct", "DirectRunner"),
    ("apache_beam.runners.render.RenderRunner", "apache_beam.runners.render.RenderRunner"),  # a module.Class path
    # that imports (one that does not is refused before anything is written: tests/test_nothing_lost_outputs.py)
])
def test_runner_short_names_are_normalised_once(typed: str, name: str) -> None:
    from pipeline.runner_names import canonical_runner, normalise_runner_args
    from pipeline.submit import runner_name

    assert canonical_runner(typed) == name
    for argv in (["--runner", typed], [f"--runner={typed}"]):
        config = parse_config(["--input", str(SAMPLE), "--output", "/tmp/never", *argv])
        assert runner_name(PipelineOptions(list(config.beam_args))) == name == (config.runner or "DirectRunner")
        assert config.local_runner is (name == "DirectRunner")
    assert normalise_runner_args(["--runner", typed, "--x=1"]) == ["--runner", name, "--x=1"]


def test_short_runner_names_get_their_checks() -> None:
    with pytest.raises(RunnerOptionsError, match="--flink_master"):
        validate_runner_options(["--runner=flink"], STUBS)
    with pytest.raises(RunnerOptionsError, match="--project"):
        validate_runner_options(["--runner", "dataflow"], STUBS)
