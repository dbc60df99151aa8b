"""argv becomes one frozen run config, parsed once: later steps read the config, nothing re-parses or changes it."""
from __future__ import annotations

import argparse
import dataclasses
import pathlib

import pytest

from conftest import run_pipeline


def _argv(scenes_dir: pathlib.Path, out: pathlib.Path) -> list[str]:
    return ["--input", str(scenes_dir / "manifest.jsonl"), "--output", str(out), "--samples-per-shard", "4",
            "--stages", "ingest", "--runner", "direct"]


def test_the_run_config_is_frozen_and_holds_what_is_derived_from_the_flags(scenes_dir: pathlib.Path,
                                                                           tmp_path: pathlib.Path) -> None:
    from pipeline.config import parse_config

    config = parse_config(_argv(scenes_dir, tmp_path / "o"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.num_shards = 3  # type: ignore[misc]
    assert config.runner == "DirectRunner" and config.local_runner is True and config.stages_run == ()
    assert config.beam_args == ("--runner", "DirectRunner")
    assert config.progress_stages == ["read", "dedup", "done"]
    assert len(config.config_hash) > 8 and config.info["config"]["stages"] == "ingest"


def test_every_flag_of_finehard_shards_is_a_field_of_the_run_config() -> None:
    from core.run_config import RunConfig
    from pipeline.options import add_curation_args

    parser = argparse.ArgumentParser(add_help=False)
    add_curation_args(parser)
    flags = {a.dest for a in parser._actions}
    assert flags <= {f.name for f in dataclasses.fields(RunConfig)}


def test_finehard_shards_parses_its_argv_once_and_the_run_leaves_the_config_as_built(
        scenes_dir: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.run
    from pipeline.cli import main

    parses, configs = [], []
    real_parse = argparse.ArgumentParser.parse_known_args

    def counting(self, args=None, namespace=None):  # noqa: ANN001, ANN202
        if "--input" in (args or []):  # a parse of the whole argv (Beam's parsers also see the Beam flags alone)
            parses.append(list(args))
        return real_parse(self, args, namespace)

    real_run = pipeline.run.run

    def keeping(config, *a, **kw):  # noqa: ANN001, ANN202
        before = dataclasses.replace(config)
        summary = real_run(config, *a, **kw)
        configs.append((before, config))
        return summary

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", counting)
    monkeypatch.setattr(pipeline.run, "run", keeping)
    assert main(["shards", *_argv(scenes_dir, tmp_path / "o")]) == 0
    assert len(parses) == 1, parses
    (before, after), = configs
    assert after == before and after.num_shards == 0  # the shard count the launcher decided is not written back
    assert run_pipeline(scenes_dir / "manifest.jsonl", tmp_path / "o", *_argv(scenes_dir, tmp_path / "o")[4:])[
        "written"] == 12
