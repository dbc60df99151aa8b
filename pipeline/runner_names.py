"""The one place that turns what users type after ``--runner`` into Beam's runner name.

``dask``, ``DaskRunner``, ``daskrunner`` ... -> ``DaskRunner``; case-insensitive, with or without the
``Runner`` suffix. A name not listed here (a dotted path to a runner class, say) is kept as given.
"""
from __future__ import annotations

from typing import Optional

RUNNERS = ("DirectRunner", "FnApiRunner", "DaskRunner", "FlinkRunner", "DataflowRunner", "PortableRunner",
           "PrismRunner", "SparkRunner")
LOCAL_RUNNERS = ("DirectRunner", "FnApiRunner")  # in this process (the FnApiRunner)
_BY_KEY = {name.lower(): name for name in RUNNERS} | {name.lower()[:-len("runner")]: name for name in RUNNERS}


def canonical_runner(name: Optional[str]) -> Optional[str]:
    """``"dask"`` -> ``"DaskRunner"``; None stays None; an unknown name is returned unchanged."""
    if not isinstance(name, str):
        return name
    return _BY_KEY.get(name.strip().lower(), name)


def normalise_runner_args(beam_args: list[str]) -> list[str]:
    """The same Beam flags with the value of ``--runner`` (``--runner X`` or ``--runner=X``) made canonical."""
    out, i = [], 0
    while i < len(beam_args):
        arg = beam_args[i]
        if arg == "--runner" and i + 1 < len(beam_args):
            out += [arg, canonical_runner(beam_args[i + 1])]
            i += 2
            continue
        if arg.startswith("--runner="):
            arg = "--runner=" + canonical_runner(arg[len("--runner="):])
        out.append(arg)
        i += 1
    return out
