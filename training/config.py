"""Training configuration: a dataclass loaded from YAML/JSON, every field overridable from the CLI."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
RECIPES = ("upstream", "paper")  # configs/stage<N>-<recipe>.yaml; upstream reproduces the released checkpoints
CHOICES = {"recipe": RECIPES, "shuffle": ("stream", "full"), "roi_align": ("auto", "torchvision", "torch"),
           "precision": ("auto", "fp32", "bf16"), "schedule": ("cosine", "constant")}
MAX_AUTO_WORKERS = 8  # upstream scripts/train.sh --dataloader_num_workers 8


class ConfigError(ValueError):
    """A bad config file or value; the message says what to do."""


@dataclass
class TrainConfig:
    recipe: str = "upstream"  # which bundled file the values came from (configs/stage<N>-<recipe>.yaml)
    stage: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    warmup_steps: int = 200
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    steps: int = 0  # 0: `epochs` passes over the shards (counted at start)
    epochs: int = 1
    batch_size: int = 128  # per device; the global batch is this x the number of processes
    image_size: int = 224
    max_regions: int = 4
    long_text_len: int = 248
    short_text_len: int = 77
    keep_len: int = 20
    shuffle: str = "stream"  # stream: shards reshuffled + a sample buffer; full: every sample reshuffled per epoch
    shuffle_buffer: int = 1000
    workers: int = -1  # data-loader processes per rank; -1: from the machine's cores (see auto_workers)
    precision: str = "auto"
    grad_clip: float = 0.0  # max gradient norm; 0: no clipping (upstream's DeepSpeed config clips none)
    max_logit_scale: float = 0.0  # 0: temperatures unclamped (upstream); e.g. 100 to cap them
    init_temperature: float = 0.0  # >0: start logit_scale at ln(1/tau) (the paper's stage 1: 0.07); 0: the model's
    roi_align: str = "auto"  # auto: torchvision's kernel where the device has one, else plain torch ops
    w_global: float = 1.0
    w_regional: float = 0.0
    w_hard: float = 0.0
    seed: int = 0
    log_every: int = 10
    save_every: int = 1000

    def validate(self) -> "TrainConfig":
        """Raise ConfigError on values that cannot work."""
        if self.stage not in (1, 2):
            raise ConfigError(f"stage must be 1 or 2, got {self.stage}")
        if len(self.betas) != 2:
            raise ConfigError(f"betas needs two numbers, got {self.betas}")
        for name, allowed in CHOICES.items():
            if name != "recipe" and getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.workers < -1:
            raise ConfigError(f"workers must be -1 (auto), 0 (load in the training process) or more, got {self.workers}")
        for name in ("epochs", "batch_size", "image_size", "max_regions", "long_text_len", "short_text_len"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("steps", "warmup_steps", "max_logit_scale", "grad_clip", "init_temperature"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if self.keep_len >= self.short_text_len:
            raise ConfigError("keep_len must be smaller than short_text_len")
        return self


def default_config_path(stage: int, recipe: str = "upstream") -> str:
    """The bundled config file for ``stage`` and ``recipe`` (``upstream`` or ``paper``)."""
    if recipe not in RECIPES:
        raise ConfigError(f"recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    return os.path.join(CONFIG_DIR, f"stage{stage}-{recipe}.yaml")


def auto_workers(local_processes: int = 1, cpus: int | None = None) -> int:
    """Data-loader workers per training process from the machine's cores: one core per process stays
    with the training loop, at most :data:`MAX_AUTO_WORKERS` (upstream's 8), 0 on a one-core share."""
    if cpus is None:
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cpus = os.cpu_count() or 1
    per_process = cpus // max(1, local_processes)
    return max(0, min(MAX_AUTO_WORKERS, per_process - 1))


def load_config_file(path: str) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} not found; pass --config a YAML/JSON file, or --recipe upstream|paper "
                          "for the bundled ones")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".json"):
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r} must hold a mapping of keys to values")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown keys {unknown} in {path!r}; known keys: {sorted(known)}")
    return data


FIELD_HELP = {  # what each TrainConfig field sets, for its --flag's help
    "lr": "peak learning rate (AdamW)", "weight_decay": "AdamW weight decay (not on biases and LayerNorms)",
    "betas": "AdamW betas, two numbers", "eps": "AdamW epsilon", "warmup_steps": "linear warm-up steps",
    "schedule": "learning-rate schedule after warm-up: cosine or constant",
    "min_lr_ratio": "the cosine schedule ends at lr x this", "steps": "optimizer steps (0: --epochs passes)",
    "epochs": "passes over the shards when --steps is 0", "batch_size": "images per device per step",
    "image_size": "images resized (no crop) to this square side", "max_regions": "regions per image used",
    "long_text_len": "tokens of the long caption", "short_text_len": "tokens of short captions and expressions",
    "keep_len": "positions kept as they are when the 77 position embeddings are extended",
    "shuffle_buffer": "samples in the shuffle buffer", "workers": "data-loader worker processes",
    "precision": "auto (bf16 autocast + TF32 on cuda/npu, fp32 on cpu), fp32 or bf16",
    "grad_clip": "gradient-norm clip (0: none)", "max_logit_scale": "cap of the temperatures' logit scale (0: none)",
    "w_global": "weight of the global contrastive loss", "w_regional": "weight of the regional loss",
    "w_hard": "weight of the hard-negative loss", "seed": "random seed", "log_every": "log every this many steps",
    "save_every": "checkpoint every this many steps",
}


def _stage_defaults() -> dict[int, dict[str, Any]]:
    """The bundled stage configs (what an override replaces), or {} when they cannot be read."""
    try:
        return {stage: load_config_file(default_config_path(stage)) for stage in (1, 2)}
    except (ConfigError, OSError, ImportError, ValueError):
        return {}


def _shown(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def add_override_args(parser: argparse.ArgumentParser) -> None:
    """One ``--field-name`` flag per TrainConfig field (default None = keep the config file's value);
    its help says what it sets and the value of each bundled stage config."""
    group = parser.add_argument_group("config overrides (each replaces the value of --config; default: "
                                      "training/configs/stage<N>-upstream.yaml's, the default recipe, shown as stage 1 / stage 2)")
    stages = _stage_defaults()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "stage":
            continue  # --stage is a main flag
        values = [_shown(stages[s].get(f.name, getattr(TrainConfig(), f.name))) for s in (1, 2) if s in stages]
        text = FIELD_HELP.get(f.name, f.name.replace("_", " "))
        if values:
            text += f" (default: stage 1 {values[0]}, stage 2 {values[1]})"
        text = text.replace("%", "%%")
        if f.name == "betas":
            group.add_argument(flag, type=float, nargs=2, default=None, help=text + "; e.g. 0.9 0.98")
            continue
        if f.name == "recipe":
            group.add_argument(flag, choices=RECIPES, default=None,
                               help="bundled values: upstream (default: its released code; reproduces its checkpoints) "
                                    "or paper (the FG-CLIP paper's); each value's source is in configs/stage<N>-<recipe>.yaml")
            continue
        if f.name in CHOICES:
            group.add_argument(flag, choices=CHOICES[f.name], default=None, help=text)
            continue
        if f.name == "workers":
            group.add_argument(flag, type=int, default=None,
                               help="data-loader processes per rank (-1: from the cores, at most 8; 0: none)"
                                    + text[len(FIELD_HELP.get(f.name, "")):])
            continue
        ftype = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
        group.add_argument(flag, type=ftype, default=None, help=text)


def build_config(stage: int, path: str | None, args: argparse.Namespace | None = None) -> TrainConfig:
    """Defaults < config file (``path``, else the bundled one of ``--recipe``) < CLI overrides; ``stage`` always wins."""
    recipe = getattr(args, "recipe", None) if args is not None else None
    if path and recipe:
        raise ConfigError("pass --config FILE or --recipe NAME, not both (--recipe picks a bundled config file)")
    values: dict[str, Any] = {}
    values.update(load_config_file(path or default_config_path(stage, recipe or "upstream")))
    if path:
        values.setdefault("recipe", "custom")  # a file of one's own: not one of the bundled recipes
    if args is not None:
        for f in dataclasses.fields(TrainConfig):
            v = getattr(args, f.name, None)
            if v is not None and f.name != "stage":
                values[f.name] = list(v) if f.name == "betas" else v
    values["stage"] = stage
    cfg = TrainConfig(**values)
    return cfg.validate()
