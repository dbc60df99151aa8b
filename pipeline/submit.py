"""Submitting to Dataflow or Flink: check the runner options before anything is staged.

``validate_runner_options(beam_args, engines)`` fails fast, with every problem in one message,
on the mistakes that otherwise surface minutes later on a remote cluster (see docs/deploy.md):
a DataflowRunner without project/region/temp_location or a way to ship this project to the
workers; a GPU engine on Dataflow without an accelerator or a GPU-capable custom container; a
FlinkRunner without --flink_master, the Flink version its job server is built for, or an SDK
environment with the project's pins; a PortableRunner without --job_endpoint.
"""
from __future__ import annotations

import os
import re
import sys
from typing import Mapping, Optional, Sequence

import fsspec
from apache_beam.options.pipeline_options import (DebugOptions, FlinkRunnerOptions, GoogleCloudOptions,
                                                  PipelineOptions, PortableOptions, SetupOptions,
                                                  StandardOptions, WorkerOptions)

from core.engines import EngineRegistry
from pipeline.runner_names import canonical_runner
from stages.detect import DETECTORS
from stages.negatives import NEGATIVE_ENGINES
from stages.caption import CAPTIONERS

# Each engine flag's registry; whether an engine needs the worker's accelerator is its
# ``EngineEntry.gpu`` there (a client of a remote server is CPU: the GPU is the server's).
ENGINE_REGISTRIES: dict[str, EngineRegistry] = {r.role: r for r in (CAPTIONERS, DETECTORS, NEGATIVE_ENGINES)}
ACCELERATOR_OPTION = "worker_accelerator"
ACCELERATOR_EXAMPLE = "--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"


class RunnerOptionsError(ValueError):
    """The Beam flags cannot work on the chosen runner; the message lists every problem and its fix."""


def runner_name(options: PipelineOptions) -> str:
    """The runner's short name (``DataflowRunner``, ``FlinkRunner`` ...), ``DirectRunner`` when unset."""
    name = canonical_runner(options.view_as(StandardOptions).runner) or "DirectRunner"
    return name if isinstance(name, str) else type(name).__name__


def gpu_engines(engines: Mapping[str, str]) -> list[str]:
    """The engine specs (``{"captioner": raw, "detector": raw, "negatives": raw}``) that need the worker's GPU."""
    return [raw for role, raw in engines.items() if raw and ENGINE_REGISTRIES[role].is_gpu(raw)]


def _has_accelerator(gcp: GoogleCloudOptions, options: PipelineOptions) -> bool:
    service = [s for s in (gcp.dataflow_service_options or []) if s.startswith(ACCELERATOR_OPTION)]
    experiments = options.view_as(DebugOptions).experiments or []
    return bool(service) or any(e.startswith(ACCELERATOR_OPTION) for e in experiments)


def _dataflow_problems(options: PipelineOptions, engines: Mapping[str, str],
                       gpu_accelerator: Optional[str] = None) -> list[str]:
    gcp = options.view_as(GoogleCloudOptions)
    problems = []
    if not gcp.project:
        problems.append("DataflowRunner needs --project=YOUR_GCP_PROJECT")
    if not gcp.region:
        problems.append("DataflowRunner needs --region (e.g. --region=us-central1, one with the GPUs you ask for)")
    temp = gcp.temp_location or gcp.staging_location
    if not temp:
        problems.append("DataflowRunner needs --temp_location=gs://BUCKET/tmp (staging and temporary files)")
    elif not temp.startswith("gs://"):
        problems.append(f"--temp_location must be a gs:// path on Dataflow, got {temp!r}")
    container = options.view_as(WorkerOptions).sdk_container_image
    setup = options.view_as(SetupOptions)
    if not container and not setup.setup_file and not setup.requirements_file:
        problems.append("DataflowRunner workers need this project installed: add --setup_file ./setup.py "
                        "(CPU engines) or --sdk_container_image=REGISTRY/finehard-gpu:TAG (see deploy/Dockerfile)")
    gpu = gpu_engines(engines)
    # --gpu-accelerator is an accelerator resource hint on the GPU steps (Dataflow's right fitting), and
    # Dataflow says not to combine right fitting with the worker_accelerator service option.
    if gpu_accelerator and _has_accelerator(gcp, options):
        problems.append(f"--gpu-accelerator (right fitting: GPUs for the model steps only) and {ACCELERATOR_OPTION} "
                        "(GPUs on every worker) cannot be combined on Dataflow; keep one of them")
    if gpu:
        if not _has_accelerator(gcp, options) and not gpu_accelerator:
            problems.append(f"GPU engine(s) {', '.join(gpu)} on Dataflow need a GPU on the workers: "
                            f"{ACCELERATOR_EXAMPLE} (every worker), or --gpu-accelerator "
                            "'type:nvidia-l4;count:1;install-nvidia-driver' (the model steps only)")
        if not container:
            problems.append(f"GPU engine(s) {', '.join(gpu)} on Dataflow need the GPU custom container "
                            "(CUDA, this project, the vLLM server env): --sdk_container_image=REGISTRY/"
                            "finehard-gpu:TAG built from deploy/Dockerfile")
    return problems


BEAM_VERSION = "2.77.0"
FLINK_JAR = re.compile(r"beam-runners-flink-(?P<flink>\d+\.\d+)-job-server-(?P<beam>[\w.]+)\.jar$")
BEAM_IMAGE = re.compile(r"(?:^|/)beam_python(?P<py>\d+\.\d+)_sdk:(?P<beam>[\w.]+)$")


def _flink_problems(options: PipelineOptions, beam_args: Sequence[str] = ()) -> list[str]:
    """FlinkRunner: a remote JobManager, the Flink version the job server is built for, an SDK
    environment the task managers can start with the project's pins (Beam 2.77 publishes job
    servers for Flink 1.19, 1.20, 2.0, 2.1 and 2.2, and picks 2.2 when --flink_version is not given)."""
    flink = options.view_as(FlinkRunnerOptions)
    versions = FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS
    problems = []
    if not flink.flink_master or flink.flink_master in ("[auto]", "[local]"):
        problems.append("FlinkRunner needs --flink_master=HOST:8081 (the JobManager's REST address); "
                        "'[auto]'/'[local]' start an embedded Flink that must be downloaded")
    explicit_version = any(a == "--flink_version" or a.startswith("--flink_version=") for a in beam_args)
    jar = flink.flink_job_server_jar
    if jar:
        if "://" not in jar and not os.path.exists(jar):
            problems.append(f"--flink_job_server_jar {jar} does not exist (stage "
                            f"beam-runners-flink-{flink.flink_version}-job-server-{BEAM_VERSION}.jar there first)")
        m = FLINK_JAR.search(jar)
        if m and m["beam"] != BEAM_VERSION:
            problems.append(f"--flink_job_server_jar {os.path.basename(jar)} is for Beam {m['beam']}; this launcher "
                            f"is Beam {BEAM_VERSION}: use beam-runners-flink-{m['flink']}-job-server-{BEAM_VERSION}.jar")
        if m and explicit_version and m["flink"] != flink.flink_version:
            problems.append(f"--flink_job_server_jar is built for Flink {m['flink']} but --flink_version is "
                            f"{flink.flink_version}: they must match your cluster's Flink")
    elif not explicit_version:
        problems.append(f"FlinkRunner: say which Flink your cluster runs with --flink_version "
                        f"({'|'.join(versions)}); without it Beam {BEAM_VERSION} starts the job server for Flink "
                        f"{versions[-1]} (beam-runners-flink-{versions[-1]}-job-server-{BEAM_VERSION}.jar), "
                        "which a cluster of another version rejects")
    portable = options.view_as(PortableOptions)
    env = (portable.environment_type or "").upper()
    setup = options.view_as(SetupOptions)
    ships_project = bool(setup.setup_file or setup.requirements_file)
    if not env:
        problems.append("FlinkRunner needs the SDK environment of the task managers: --environment_type=DOCKER "
                        "--environment_config=IMAGE (deploy/Dockerfile, or apache/beam_python3.11_sdk:2.77.0 with "
                        "--setup_file ./setup.py), or PROCESS/EXTERNAL (docs/deploy.md)")
    elif env == "LOOPBACK":
        problems.append("--environment_type=LOOPBACK runs the workers inside this launcher: only for a local "
                        "Flink; a cluster needs DOCKER, PROCESS or EXTERNAL")
    elif env in ("DOCKER", "BEAM:ENV:DOCKER:V1"):
        image = portable.environment_config or ""
        m = BEAM_IMAGE.search(image)
        if not image or m:
            if not ships_project:
                problems.append(f"the task managers' image {image or '(Beam default)'} lacks this project: add "
                                "--setup_file ./setup.py, or --environment_config=an image built from deploy/Dockerfile")
        if m and m["beam"] != BEAM_VERSION:
            problems.append(f"--environment_config {image} is Beam {m['beam']}; the launcher is Beam {BEAM_VERSION}")
        launcher_py = f"{sys.version_info.major}.{sys.version_info.minor}"
        if m and m["py"] != launcher_py:
            problems.append(f"--environment_config {image} runs Python {m['py']}; the launcher runs {launcher_py} "
                            "(Beam refuses a mismatch)")
    return problems + _environment_problems(options)


def _environment_problems(options: PipelineOptions) -> list[str]:
    portable = options.view_as(PortableOptions)
    env = (portable.environment_type or "DOCKER").upper()
    if env not in ("DOCKER", "PROCESS", "EXTERNAL", "LOOPBACK", "BEAM:ENV:DOCKER:V1", "BEAM:ENV:PROCESS:V1"):
        return [f"--environment_type {portable.environment_type!r} is not DOCKER, PROCESS, EXTERNAL or LOOPBACK"]
    if env == "PROCESS" and not (portable.environment_config or portable.environment_options):
        return ["--environment_type=PROCESS needs --environment_config='{\"command\": \"/opt/apache/beam/boot\"}' "
                "(the SDK harness boot binary on every task manager)"]
    if env == "EXTERNAL" and not (portable.environment_config or portable.environment_options):
        return ["--environment_type=EXTERNAL needs --environment_config=HOST:PORT of a running worker pool"]
    return []


def _portable_problems(options: PipelineOptions) -> list[str]:
    if not options.view_as(PortableOptions).job_endpoint:
        return ["PortableRunner needs --job_endpoint=HOST:8099 (a job server), or --job_endpoint=embed "
                "for the in-process one"]
    return _environment_problems(options)


def local_path_problems(paths: Mapping[str, Optional[str]], runner: str = "Dataflow",
                        shared_mounts: Sequence[str] = ()) -> list[str]:
    """Flags naming a folder on the launching machine, which the workers of a cluster cannot reach
    (unless it lies under a ``--shared-mount`` that every worker has at the same path)."""
    problems = []
    mounts = [m.rstrip("/") + "/" for m in shared_mounts if m]
    for flag, value in paths.items():
        if value and value not in ("auto", "none") and fsspec.core.split_protocol(value)[0] in (None, "file", "local"):
            local = os.path.abspath(fsspec.core.strip_protocol(value) if "://" in value else value)
            if any((local.rstrip("/") + "/").startswith(m) for m in mounts):
                continue
            hint = "give a gs:// URI" if runner == "Dataflow" else \
                "give a gs:// or s3:// URI, or declare a folder every task manager mounts: --shared-mount /nfs"
            problems.append(f"{flag} {value} is a path on this machine, which {runner} workers cannot reach; {hint}")
    return problems


def validate_runner_options(beam_args: list[str], engines: Mapping[str, str],
                            paths: Optional[Mapping[str, Optional[str]]] = None,
                            shared_mounts: Sequence[str] = (), gpu_accelerator: Optional[str] = None) -> PipelineOptions:
    """Parse ``beam_args`` and check them for the runner they name; raises :class:`RunnerOptionsError`.

    ``paths``: flag -> value of the pipeline's own folders (input, output, spill, cache); on
    Dataflow they must not be local paths, on Flink only under one of ``shared_mounts``.
    ``gpu_accelerator``: ``--gpu-accelerator`` (an accelerator resource hint on the GPU steps).
    """
    options = PipelineOptions(beam_args)
    name = runner_name(options)
    problems: list[str] = []
    if name == "DataflowRunner":
        problems = _dataflow_problems(options, engines, gpu_accelerator) + local_path_problems(paths or {})
    elif name == "FlinkRunner":
        problems = _flink_problems(options, beam_args) + local_path_problems(paths or {}, "Flink", shared_mounts)
    elif name == "PortableRunner":
        problems = _portable_problems(options)
    if problems:
        raise RunnerOptionsError("; ".join(problems))
    return options

