"""The run's configuration, frozen: what ``finehard shards`` was asked (built once from argv by
``pipeline.config``) and what the launcher then decided (:class:`LaunchPlan`).

Both are read by every layer that assembles or launches a run (``transforms.graph``, ``pipeline.run``);
nothing changes them while the run goes on: a value derived from the flags is a field set when the
config is built, a decision taken from the world (the listing, the run being resumed) is a field of
the launch plan.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


def caption_options(flags: Any) -> dict[str, Any]:
    """The captioner's engine options (also part of the config identity); a new dict each call."""
    return {"max_side": flags.caption_max_side, "max_tokens": flags.caption_max_tokens,
            "prompt": flags.caption_prompt, "concurrency": flags.caption_concurrency,
            "timeout": flags.caption_timeout, "trust_remote_code": flags.captioner_trust_remote_code}


def detector_options(flags: Any) -> dict[str, Any]:
    """The detector's engine options (also part of the config identity); a new dict each call."""
    return {"text_encoder": flags.detector_text_encoder, "imgsz": flags.detector_imgsz}


@dataclass(frozen=True)
class RunConfig:
    """One field per flag of ``finehard shards`` (``pipeline.options.add_curation_args``: same names,
    values as parsed), the Beam flags, and the values derived from them."""

    input: str
    output: str
    samples_per_shard: int
    captioner: str
    detector: str
    negatives: str
    caption_max_side: int
    caption_max_tokens: int
    caption_prompt: str
    caption_concurrency: Optional[int]  # None: the request window adapts (docs/engines.md)
    caption_timeout: float
    captioner_trust_remote_code: bool
    detector_text_encoder: Optional[str]
    detector_imgsz: int
    gpu_accelerator: Optional[str]
    max_short_caption_chars: int
    box_conf: float
    nms_iou: float
    max_regions: int
    max_pixels: int
    num_shards: int  # as given: 0 = decided by the launcher (LaunchPlan.num_shards)
    rows_per_read_unit: int
    max_image_bytes: int
    min_side: int
    max_caption_chars: int
    negatives_retries: int
    stages: str  # as given (part of the config identity); stages_run is what it selects
    reuse_captions: bool
    dedup: bool
    dedup_keep: str
    near_dup_threshold: int
    model_cache: str  # as given (auto, none, a folder); LaunchPlan.model_cache is the folder used
    overwrite: bool
    retry_failed: bool
    spill_dir: str
    wave_samples: int
    progress_every_s: float
    shared_mount: Optional[tuple[str, ...]]
    max_failure_rate: float
    batch_size: int
    # the Beam flags (runner name made canonical) and what is derived from the flags above
    beam_args: tuple[str, ...]
    runner: Optional[str]  # canonical runner name (pipeline.runner_names); None: the default, local
    local_runner: bool  # the run happens in this process (FnApiRunner) rather than on a cluster
    # a local run on one worker (Beam's default --direct_num_workers 1): a Reshuffle there spreads nothing, and only
    # holds every record back until the last one is read (the FnApiRunner runs a stage whole)
    one_local_worker: bool
    stages_run: tuple[str, ...]  # the model stages --stages selects, in chain order
    info: dict[str, Any]  # version, config and config_hash (pipeline.identity.run_info); no timestamps

    @property
    def config_hash(self) -> str:
        return self.info["config_hash"]

    @property
    def progress_stages(self) -> list[str]:
        """The points of the chain whose samples are counted for the progress display, in order."""
        return ["read", *(["dedup"] if self.dedup else []), *self.stages_run, "done"]


@dataclass(frozen=True)
class LaunchPlan:
    """What the launcher decided before any worker starts, from the listing and the run being resumed."""

    num_shards: int  # 0 when the input's size is not known cheaply (the count of what is read decides then)
    done: frozenset[int]  # shards already complete in --output: not written again
    model_cache: Optional[str]  # the model cache folder used (--model-cache auto resolved), None: off
