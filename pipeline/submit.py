"""Submitting to Dataflow or Flink: check the runner options before anything is staged.

``validate_runner_options(beam_args, engines)`` fails fast, with every problem in one message,
on the mistakes that otherwise surface minutes later on a remote cluster (see docs/deploy.md):
a DataflowRunner without project/region/temp_location or a way to ship this project to the
workers; a GPU engine on Dataflow without an accelerator or a GPU-capable custom container; a
FlinkRunner without --flink_master; a PortableRunner without --job_endpoint.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional

import fsspec
from apache_beam.options.pipeline_options import (DebugOptions, FlinkRunnerOptions, GoogleCloudOptions,
                                                  PipelineOptions, PortableOptions, SetupOptions,
                                                  StandardOptions, WorkerOptions)

from core.engines import EngineRegistry
from pipeline.runner_names import canonical_runner
from transforms.detect import DETECTORS
from transforms.negatives import NEGATIVE_ENGINES
from transforms.recaption import CAPTIONERS

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


def _dataflow_problems(options: PipelineOptions, engines: Mapping[str, str]) -> list[str]:
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
    if gpu:
        if not _has_accelerator(gcp, options):
            problems.append(f"GPU engine(s) {', '.join(gpu)} on Dataflow need a GPU on the workers: "
                            f"{ACCELERATOR_EXAMPLE}")
        if not container:
            problems.append(f"GPU engine(s) {', '.join(gpu)} on Dataflow need the GPU custom container "
                            "(CUDA, this project, the vLLM server env): --sdk_container_image=REGISTRY/"
                            "finehard-gpu:TAG built from deploy/Dockerfile")
    return problems


def _flink_problems(options: PipelineOptions) -> list[str]:
    flink = options.view_as(FlinkRunnerOptions)
    problems = []
    if not flink.flink_master or flink.flink_master in ("[auto]", "[local]"):
        problems.append("FlinkRunner needs --flink_master=HOST:8081 (the JobManager's REST address); "
                        "'[auto]'/'[local]' start an embedded Flink that must be downloaded")
    jar = flink.flink_job_server_jar
    if jar and "://" not in jar and not os.path.exists(jar):
        problems.append(f"--flink_job_server_jar {jar} does not exist (stage "
                        "beam-runners-flink-1.xx-job-server-2.77.0.jar there first)")
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


def local_path_problems(paths: Mapping[str, Optional[str]]) -> list[str]:
    """Flags naming a folder on the launching machine, which the workers of a cloud runner cannot reach."""
    problems = []
    for flag, value in paths.items():
        if value and value not in ("auto", "none") and fsspec.core.split_protocol(value)[0] in (None, "file", "local"):
            problems.append(f"{flag} {value} is a path on this machine, which Dataflow workers cannot reach; "
                            "give a gs:// URI")
    return problems


def validate_runner_options(beam_args: list[str], engines: Mapping[str, str],
                            paths: Optional[Mapping[str, Optional[str]]] = None) -> PipelineOptions:
    """Parse ``beam_args`` and check them for the runner they name; raises :class:`RunnerOptionsError`.

    ``paths``: flag -> value of the pipeline's own folders (input, output, spill, cache); on
    Dataflow they must not be local paths.
    """
    options = PipelineOptions(beam_args)
    name = runner_name(options)
    problems: list[str] = []
    if name == "DataflowRunner":
        problems = _dataflow_problems(options, engines) + local_path_problems(paths or {})
    elif name == "FlinkRunner":
        problems = _flink_problems(options)
    elif name == "PortableRunner":
        problems = _portable_problems(options)
    if problems:
        raise RunnerOptionsError("; ".join(problems))
    return options

