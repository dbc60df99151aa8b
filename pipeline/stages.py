"""The stages ``--stages`` selects, and the error of a bad flag: importable without Beam, so the CLI
checks flags before the heavy imports."""
from __future__ import annotations


class UsageError(ValueError):
    """Bad flags or paths: the CLI prints the message on one line and exits 2."""


STAGES = ("recaption", "expressions", "detect", "negatives")
# ``ingest``: no model stage (read, check, normalise, dedup, shard), the img2dataset-like first step
STAGE_PRESETS = {"all": STAGES, "ingest": ()}  # every other value is a stage name or a comma list of them


def selected_stages(raw: str) -> tuple[str, ...]:
    """``all``, ``ingest`` or a comma list of stage names (``recaption``, ``negatives`` ...); detect implies expressions."""
    names: list[str] = []
    parts = [p.strip() for p in raw.split(",") if p.strip()]
    if parts == ["ingest"]:
        return ()
    for part in parts:
        if part in STAGE_PRESETS and part != "ingest":
            names += STAGE_PRESETS[part]
        elif part in STAGES:
            names.append(part)
        else:
            raise UsageError(f"--stages: unknown stage {part!r}; give all, ingest (alone) or a comma list of "
                             f"{', '.join(STAGES)}")
    if "detect" in names:
        names.append("expressions")
    if not names:
        raise UsageError("--stages is empty; give e.g. all, recaption or negatives")
    return tuple(n for n in STAGES if n in names)
