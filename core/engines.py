"""Engine specs (``--captioner vllm:/models/qwen``) and the lazy registry behind them.

A spec is ``KIND[:TARGET][#MODEL]``: ``stub``, ``rules``, ``vllm:/path``, ``llama-cpp:/x.gguf``,
``yolo-world:/w.pt``, ``transformers:/path``, ``openai:http://host:8000/v1#model-name``.
Each stage maps kinds to ``"module:factory"`` strings, imported only when that engine is built,
so heavy optional dependencies (vLLM, llama.cpp, ultralytics) load only where they are used.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable


class EngineSpecError(ValueError):
    """A spec that names no known engine or lacks its target."""


@dataclass(frozen=True)
class EngineSpec:
    kind: str
    target: str = ""
    model: str = ""

    @property
    def raw(self) -> str:
        out = self.kind + (f":{self.target}" if self.target else "")
        return out + (f"#{self.model}" if self.model else "")

    @property
    def is_stub(self) -> bool:
        return self.kind == "stub"


def parse_spec(raw: str) -> EngineSpec:
    raw = (raw or "").strip()
    if not raw:
        raise EngineSpecError("empty engine spec")
    kind, _, rest = raw.partition(":")
    target, _, model = rest.partition("#")
    if kind == "openai" and "#" not in rest:
        # openai:http://host:8000/v1  -> the URL contains ':'; model may be omitted.
        target, model = rest, ""
    return EngineSpec(kind=kind.strip().lower(), target=target.strip(), model=model.strip())


@dataclass(frozen=True)
class EngineEntry:
    factory: str  # "module:callable", called as factory(spec, **options)
    needs_target: bool
    gpu: bool
    help: str


class EngineRegistry:
    """The engines one stage accepts."""

    def __init__(self, stage: str, entries: dict[str, EngineEntry]):
        self.stage = stage
        self.entries = entries

    def describe(self) -> str:
        return "; ".join(f"{k}{':PATH' if e.needs_target else ''} ({e.help})" for k, e in self.entries.items())

    def resolve(self, raw: str) -> EngineSpec:
        """Parse and check ``raw``; raises :class:`EngineSpecError` with what to do instead."""
        spec = parse_spec(raw)
        entry = self.entries.get(spec.kind)
        if entry is None:
            raise EngineSpecError(f"unknown {self.stage} engine {spec.kind!r} in {raw!r}; choose one of: {self.describe()}")
        if entry.needs_target and not spec.target:
            raise EngineSpecError(f"{self.stage} engine {spec.kind!r} needs a target, e.g. {spec.kind}:/path/to/weights")
        return spec

    def entry(self, spec: EngineSpec) -> EngineEntry:
        return self.entries[spec.kind]

    def build(self, spec: EngineSpec, **options: Any) -> Any:
        module_name, _, attr = self.entries[spec.kind].factory.partition(":")
        factory: Callable[..., Any] = getattr(importlib.import_module(module_name), attr)
        return factory(spec, **options)


def stub_provenance(name: str, **extra: Any) -> dict[str, Any]:
    """Provenance of a stand-in engine: always says ``stub`` so it can never pass for real data."""
    return {"engine": "stub", "model": f"stub:{name}", "stub": True, **extra}
