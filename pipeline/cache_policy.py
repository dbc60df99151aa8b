"""Cache policy: which folder keeps the model answers of a run (``--model-cache``)."""
from __future__ import annotations

import posixpath
from typing import Optional

import fsspec

from core.engines import parse_spec
from core.run_config import RunConfig


def model_cache_root(config: RunConfig) -> Optional[str]:
    """``--model-cache auto``: OUTPUT/.model-cache for local outputs when a real model engine runs, so a
    re-run that retries failed samples does not ask again for the answers that succeeded."""
    if config.model_cache != "auto":
        return None if config.model_cache in ("none", "") else config.model_cache
    real = any(parse_spec(raw).kind not in ("stub", "rules")
               for raw in (config.captioner, config.detector, config.negatives))
    local = fsspec.core.split_protocol(config.output)[0] in (None, "file", "local")
    return posixpath.join(config.output, ".model-cache") if real and local and config.local_runner else None
