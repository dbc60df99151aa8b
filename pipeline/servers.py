"""Server probing: an engine that needs a server, or weights that cannot load, stops the run before it starts."""
from __future__ import annotations

from core.engines import parse_spec
from core.run_config import RunConfig
from pipeline.stages import UsageError
from stages.detect import DETECTORS
from stages.negatives import NEGATIVE_ENGINES
from stages.caption import CAPTIONERS


def validate_engines(config: RunConfig) -> None:
    """Every engine spec names a known engine (``EngineSpecError``); YOLO-World's files are there."""
    for reg, raw in ((CAPTIONERS, config.captioner), (DETECTORS, config.detector),
                     (NEGATIVE_ENGINES, config.negatives)):
        spec = reg.resolve(raw)
        if spec.kind == "yolo-world":
            from stages.engines.yolo_world import validate

            validate(spec, text_encoder=config.detector_text_encoder)


def probe_servers(config: RunConfig) -> None:
    """On local runs, an OpenAI-compatible engine that does not answer stops the run before it starts."""
    from stages.engines import split_target
    from stages.engines.openai_client import OpenAIClient, OpenAIError

    for flag, raw in (("--captioner", config.captioner), ("--negatives", config.negatives)):
        spec = parse_spec(raw)
        if spec.kind != "openai":
            continue
        base_url, _ = split_target(spec.target)
        try:
            OpenAIClient(base_url, timeout=10.0, retries=0).request_json("GET", "models")
        except OpenAIError as e:
            if e.status is None:  # no answer at all (an HTTP error still means it is up)
                raise UsageError(f"{flag} server {base_url} does not answer ({e}); start it (or fix the URL) "
                                 "and run again") from e
