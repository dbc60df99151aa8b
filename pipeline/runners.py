"""Runner choice: which Beam runner runs the pipeline, and the curation options Beam sees."""
from __future__ import annotations

import argparse
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions

from core.run_config import RunConfig
from pipeline.options import add_curation_args
from pipeline.stages import UsageError


class FineHardOptions(PipelineOptions):
    """FineHARD curation options, visible to Beam runners and templates (defined here: pipeline.options
    stays free of Beam so that the CLI checks flags before importing it)."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        add_curation_args(parser, required=False)


def make_runner(config: RunConfig) -> Any:
    """Local runs use the FnApiRunner directly: the DirectRunner would first try Prism (a download);
    ``dask`` is this project's fixed DaskRunner (pipeline/dask_runner.py, experimental)."""
    if config.local_runner:
        from pipeline.local_runner import LocalRunner

        return LocalRunner()
    if config.runner == "DaskRunner":
        try:
            from pipeline.dask_runner import FineHardDaskRunner
        except ImportError as e:
            raise UsageError(f"--runner dask needs dask.distributed ({e}); pip install -e '.[dask]'") from e
        return FineHardDaskRunner()
    return None  # Beam resolves the runner by name (DataflowRunner, FlinkRunner, PortableRunner ...)
