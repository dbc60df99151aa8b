"""Input planning: list ``--input`` once, before any worker starts (fail fast, fingerprint, expected size)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import fsspec

from shards.outdir import InputFingerprint
from pipeline.progress_view import SampleCount
from pipeline.stages import UsageError
from inputs.units import InputError, ReadUnit, iter_units


def check_manifest(unit: ReadUnit) -> Optional[int]:
    """A parquet manifest that cannot be opened stops the run at once, with its name.

    Returns the rows its footer counts (None for every other unit), so the footer is read once.
    """
    rows = None
    for uri in unit.uris:
        local_or_store = not uri.lower().startswith(("http://", "https://"))  # http: read per row, later
        if unit.kind == "manifest" and local_or_store and uri.lower().split("?")[0].endswith(".parquet"):
            import pyarrow.parquet as pq

            try:
                with fsspec.open(uri, "rb") as f:
                    rows = (rows or 0) + pq.ParquetFile(f).metadata.num_rows
            except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds for a damaged file
                raise UsageError(f"manifest {uri} is not a readable parquet file ({type(e).__name__}: {e}); "
                                 "fix or remove it") from e
    return rows


@dataclass(frozen=True)
class InputPlan:
    """What the launcher learns from listing ``--input`` before any worker starts."""

    fingerprint: dict[str, Any]  # shards.outdir.InputFingerprint: a resumed run must see the same
    size: Optional[int]  # samples expected (pipeline.progress_view.SampleCount); None when not known cheaply


def plan_input(input_uri: str) -> InputPlan:
    """List ``--input`` once, as a stream: a missing or empty input and an unreadable parquet manifest
    stop the run here; the fingerprint and the expected size are taken unit by unit, so the
    launcher never holds the listing (the workers list it again)."""
    fingerprint, size = InputFingerprint(), SampleCount()
    try:
        for unit in iter_units(input_uri):
            rows = check_manifest(unit)
            fingerprint.add(unit)
            size.add(unit, rows)
    except InputError as e:
        raise UsageError(str(e)) from e
    return InputPlan(fingerprint.value(), size.total)
