"""Real model engines behind the stage registries, one module per engine, imported lazily by spec."""
from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

# Query keys that configure our engines rather than the server they talk to.
ENGINE_OPTION_KEYS = frozenset({
    "structured", "concurrency", "timeout", "retries", "temperature", "max_tokens", "top_p",
    "n_ctx", "n_threads", "n_batch", "tensor_parallel_size", "gpu_memory_utilization",
    "max_model_len", "load_format", "dtype", "enforce_eager", "seed", "trust_remote_code", "warmup",
})


def split_target(target: str, keys: frozenset[str] = ENGINE_OPTION_KEYS) -> tuple[str, dict[str, str]]:
    """``'/m.gguf?n_ctx=2048'`` -> ``('/m.gguf', {'n_ctx': '2048'})``; query keys not in ``keys`` stay in the target."""
    parts = urlsplit(target)
    if not parts.query:
        return target, {}
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    options = {k: v for k, v in pairs if k in keys}
    rest = "&".join(f"{k}={v}" for k, v in pairs if k not in keys)
    return urlunsplit(parts._replace(query=rest)), options


def split_coerced(target: str, keys: frozenset[str]) -> tuple[str, dict[str, object]]:
    """:func:`split_target` with the option values typed by :func:`coerce`."""
    rest, options = split_target(target, keys)
    return rest, {k: coerce(v) for k, v in options.items()}


def engine_options(target: str, flags: dict[str, Any], keys: frozenset[str] = ENGINE_OPTION_KEYS
                   ) -> tuple[str, dict[str, Any]]:
    """The one precedence rule of every engine: an option written in the spec (``?key=value``) wins
    over the same option given as a flag or keyword; flags left unset (``None``) are ignored.

    Returns the target without the engine's options, and the merged options.
    """
    rest, spec_options = split_coerced(target, keys)
    return rest, {**{k: v for k, v in flags.items() if v is not None}, **spec_options}


def coerce(value: str) -> object:
    """An option string as bool, int, float or str."""
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value
