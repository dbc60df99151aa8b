"""Test doubles of object stores without network or credentials (no request leaves the machine).

Each stands in for gcsfs or s3fs as fsspec registers it, and fails the way the real one does
offline: what gcsfs logs when storage.googleapis.com does not resolve, then retrying (here:
forever); a store that never answers; botocore's NoCredentialsError."""
from __future__ import annotations

import logging
import threading

from fsspec import AbstractFileSystem

_never = threading.Event()


class OfflineGCS(AbstractFileSystem):
    """gcsfs without network: logs its failed name lookup, as gcsfs does before each retry, and retries."""

    protocol = ("gs", "gcs")

    def info(self, path, **kwargs):
        logging.getLogger("gcsfs").warning("Could not determine bucket type for bucket name %s: Your default "
                                           "credentials were not found.", path.split("/")[0])
        logging.getLogger("gcsfs").debug("_request retrying after exception: Cannot connect to host "
                                         "storage.googleapis.com:443 ssl:default [Name or service not known]")
        _never.wait()


class SilentGCS(AbstractFileSystem):
    """A store behind a firewall that drops packets: no answer, no error, nothing logged."""

    protocol = ("gs", "gcs")

    def info(self, path, **kwargs):
        _never.wait()


class NoCredentialsError(Exception):
    """Named as botocore's is."""


class S3WithoutCredentials(AbstractFileSystem):
    protocol = ("s3", "s3a")

    def info(self, path, **kwargs):
        raise NoCredentialsError("Unable to locate credentials")
