"""FineHARD curation pipeline: options, assembly, CLI and runners."""
import logging

_KNOWN_NOISE = ("Resource module is not available", "apitools not found")


def _drop_known_noise(record: logging.LogRecord) -> bool:
    """Beam warns about these on every import/batch here; they are harmless and bury real messages."""
    return not any(n in record.getMessage() for n in _KNOWN_NOISE)


logging.getLogger().addFilter(_drop_known_noise)
