"""Engine specs (``--captioner vllm:/models/qwen``) and the lazy registry behind them.

A spec is ``KIND[:TARGET][#MODEL]``: ``stub``, ``rules``, ``vllm:/path``, ``llama-cpp:/x.gguf``,
``yolo-world:/w.pt``, ``transformers:/path``, ``openai:http://host:8000/v1#model-name``.
Each stage maps kinds to ``"module:factory"`` strings, imported only when that engine is built,
so heavy optional dependencies (vLLM, llama.cpp, ultralytics) load only where they are used.

The engine interface, one per stage kind (:class:`Captioner`, :class:`Detector`,
:class:`NegativesEngine`): an engine is built by its registry entry's factory as
``factory(spec, **options)``, answers a whole batch in one call, and reports where its output came
from with ``get_provenance()`` (a method, so it also works through the proxy of a model shared
across processes). Whether it needs an accelerator is said once, by ``EngineEntry.gpu``.
"""
from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence


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


class Engine(abc.ABC):
    """What every engine has: ``provenance`` (engine, model, prompt hash ...; ``stub: True`` for stand-ins)."""

    provenance: dict[str, Any]

    def get_provenance(self) -> dict[str, Any]:
        """A copy of the provenance block stamped on every field this engine wrote."""
        return dict(self.provenance)


class Captioner(Engine):
    @abc.abstractmethod
    def caption(self, images: list[Any]) -> list[Any]:
        """One long caption (``str``) per PIL image, or an ``Exception`` in that image's place."""


# A raw detection: ((x1, y1, x2, y2) in pixels, score, index of the expression it answers)
Detection = tuple[Sequence[float], float, int]


class Detector(Engine):
    @abc.abstractmethod
    def detect(self, images: list[Any], expressions: list[list[str]]) -> list[Any]:
        """Per image, its raw :data:`Detection` list for that image's expressions, or an ``Exception``."""


class NegativesEngine(Engine):
    @abc.abstractmethod
    def generate(self, expressions: list[str], seed: int = 0) -> list[Any]:
        """Per expression, the model's answer (a list of strings or raw JSON text) or an ``Exception``.

        The stage parses, cleans and validates every answer the same way, whichever engine gave it.
        """


@dataclass(frozen=True)
class EngineEntry:
    factory: str  # "module:callable", called as factory(spec, **options)
    needs_target: bool
    gpu: bool
    help: str


class EngineRegistry:
    """The engines one stage accepts.

    ``stage`` is the stage's one name (``recaption``, ``detect``, ``negatives``: the same in
    ``--stages``, metrics, dead-letter reasons); ``role`` is what its flag names (``--captioner``);
    every engine built must be an instance of ``interface``.
    """

    def __init__(self, stage: str, role: str, interface: type[Engine], entries: dict[str, EngineEntry]):
        self.stage = stage
        self.role = role
        self.interface = interface
        self.entries = entries

    def describe(self) -> str:
        return "; ".join(f"{k}{':PATH' if e.needs_target else ''} ({e.help})" for k, e in self.entries.items())

    def resolve(self, raw: str) -> EngineSpec:
        """Parse and check ``raw``; raises :class:`EngineSpecError` with what to do instead."""
        spec = parse_spec(raw)
        entry = self.entries.get(spec.kind)
        if entry is None:
            raise EngineSpecError(f"unknown {self.role} engine {spec.kind!r} in {raw!r}; choose one of: {self.describe()}")
        if entry.needs_target and not spec.target:
            raise EngineSpecError(f"{self.role} engine {spec.kind!r} needs a target, e.g. {spec.kind}:/path/to/weights")
        return spec

    def entry(self, spec: EngineSpec) -> EngineEntry:
        return self.entries[spec.kind]

    def is_gpu(self, raw: str) -> bool:
        """Whether the engine named by ``raw`` runs a model on the worker's accelerator."""
        return self.entry(self.resolve(raw)).gpu

    def build(self, spec: EngineSpec, **options: Any) -> Engine:
        module_name, _, attr = self.entries[spec.kind].factory.partition(":")
        factory: Callable[..., Any] = getattr(importlib.import_module(module_name), attr)
        engine = factory(spec, **options)
        if not isinstance(engine, self.interface):
            raise TypeError(f"{self.role} engine {spec.kind!r} built a {type(engine).__name__}, "
                            f"which is not a {self.interface.__name__}")
        return engine


def stub_provenance(name: str, **extra: Any) -> dict[str, Any]:
    """Provenance of a stand-in engine: always says ``stub`` so it can never pass for real data."""
    return {"engine": "stub", "model": f"stub:{name}", "stub": True, **extra}
