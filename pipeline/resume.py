"""Resume policy: which shards a re-run into the same ``--output`` skips, and the shard count it keeps."""
from __future__ import annotations

import json
import posixpath
from typing import Any, Optional

import fsspec

from core.run_config import RunConfig
from pipeline.identity import config_changes
from shards.outdir import RUN_FILE, read_run_file, same_input
from shards.output import read_shard_stats
from pipeline.stages import UsageError
from shards.markers import completed_shards
from shards.write import num_shards_for


def check_resume(output: str, info: dict[str, Any], fingerprint: dict[str, Any], retry_failed: bool) -> set[int]:
    """The shard ids a re-run into ``output`` skips; refuses when the output came from another config or input."""
    done = completed_shards(output, retry_failed=retry_failed)
    if not done and not read_shard_stats(output):
        return set()
    previous = read_run_file(output)
    if previous is None:
        raise UsageError(f"--output {output} holds shards but no {RUN_FILE} (an older version, or not ours); "
                         "use a new --output, or --overwrite to start over")
    if previous.get("config_hash") != info["config_hash"]:
        raise UsageError(f"--output {output} holds shards from a different configuration"
                         f"{config_changes(previous.get('config'), info['config'])}; "
                         "use a new --output, or --overwrite to start over")
    if not same_input(previous.get("input_fingerprint"), fingerprint):
        then, now = (previous.get("input_fingerprint") or {}).get("listed_uris"), fingerprint["listed_uris"]
        what = (f"{then} listed then, {now} now" if then != now else
                f"the same {now} listed, but some file's contents or times differ: rewritten in place")
        raise UsageError(f"--input changed since the run that wrote --output {output} (files or manifests "
                         f"added, removed or rewritten: {what}); resuming would mix the "
                         "two. Use a new --output, or --overwrite to start over")
    return done


def decide_num_shards(config: RunConfig, size: Optional[int], previous: Optional[dict[str, Any]] = None) -> int:
    """The shard count, before anything is read: ``--num-shards``, the resumed run's, or from the
    listing's ``size`` (``pipeline.input_plan.plan_input``).

    0 when the size of the input is not known cheaply (the count of what is read decides then).
    """
    before = (previous or {}).get("num_shards") or 0
    if config.num_shards:
        if before and before != config.num_shards:
            raise UsageError(f"--num-shards {config.num_shards}, but the run being resumed wrote {before} shards; "
                             "use a new --output, or --overwrite to start over")
        return config.num_shards
    if before:
        return before
    return num_shards_for(size, config.samples_per_shard) if size is not None else 0


def previous_run_figures(output: str) -> dict[str, Any]:
    """``wall_seconds`` and ``stage_metrics`` of the summary.json a run left in ``output`` ({} if none)."""
    fs, root = fsspec.core.url_to_fs(output)
    try:
        with fs.open(posixpath.join(root, "summary.json"), "rt", encoding="utf-8") as f:
            found = json.load(f)
    except (FileNotFoundError, ValueError):
        return {}
    return {k: found[k] for k in ("wall_seconds", "stage_metrics") if isinstance(found, dict) and k in found}
