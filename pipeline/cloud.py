"""Cloud paths (gs://, s3://, ...) that cannot be used fail in seconds, in one line that says what to fix.

Without network or credentials, gcsfs retried every request for 33 s (six tries, backing off),
the launcher made several such requests, and the run ended after 2 min 35 s and 14 logged
tracebacks with ``gaierror: [Errno -2] Name or service not known``, naming neither the URL nor
credentials; without gcsfs the hint named a package index install that does not exist. So before
the launcher lists anything, :func:`check_cloud_paths` asks each object-store path once, all at
the same time, with a deadline (:data:`CHECK_S`, ``FINEHARD_CLOUD_CHECK_S``):

* the filesystem package is missing: the line names it and the extra that brings it, installed
  from the checkout (``pip install -e '.[gcp]'``; finehard is not on a package index);
* the store answers (the path exists or not): nothing to say, the run goes on;
* no answer, a host name that does not resolve, or missing or refused credentials: the line names
  the URL, the filesystem, what failed and how to fix it (network, credentials). What the
  filesystem logs meanwhile (its retries and their tracebacks) is kept out of the terminal and
  used for the line; a name-resolution failure ends the wait at once.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

CHECK_S = float(os.environ.get("FINEHARD_CLOUD_CHECK_S", "20"))


@dataclass(frozen=True)
class Store:
    name: str  # what users call it
    package: str  # the fsspec implementation
    extra: str  # this project's extra that installs it
    credentials: str  # how to give credentials
    loggers: tuple[str, ...]  # where the package logs its retries


GCS = Store("Google Cloud Storage", "gcsfs", "gcp",
            "gcloud auth application-default login, or GOOGLE_APPLICATION_CREDENTIALS=KEY.json",
            ("gcsfs", "google", "google.auth", "urllib3"))
S3 = Store("Amazon S3", "s3fs", "aws",
           "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or ~/.aws/credentials",
           ("s3fs", "aiobotocore", "botocore", "urllib3"))
STORES = {"gs": GCS, "gcs": GCS, "s3": S3, "s3a": S3}
NO_NAME = re.compile(r"Name or service not known|Temporary failure in name resolution|nodename nor servname|"
                     r"getaddrinfo failed|No address associated with hostname", re.I)
UNREACHABLE = re.compile(NO_NAME.pattern + r"|Could not connect to the endpoint|Cannot connect to host|"
                         r"Connection refused|Network is unreachable|timed out|ConnectTimeout", re.I)
# Credential lookups ask a cloud VM's metadata server, which no machine outside that cloud reaches: its
# failures say nothing about the network.
METADATA = re.compile(r"metadata|169\.254\.169\.254", re.I)
NO_CREDENTIALS = re.compile(r"credentials were not found|Unable to locate credentials|NoCredentials|"
                            r"DefaultCredentialsError|could not automatically determine credentials", re.I)
DENIED = re.compile(r"\b(401|403)\b|Forbidden|AccessDenied|Access Denied|permission|Unauthori[sz]ed|"
                    r"InvalidAccessKeyId|SignatureDoesNotMatch|invalid_grant|RefreshError", re.I)
GLOB = re.compile(r"[*?\[{]")


_answered: set[str] = set()  # URIs whose store answered in this process (the CLI asks before run() does)


class CloudPathError(ValueError):
    """A cloud path that cannot be used; the message is the one line the CLI prints."""


class _Capture(logging.Handler):
    """Keeps what the filesystem logs while it is asked (retries, tracebacks) instead of printing it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: deque[str] = deque(maxlen=50)
        self.no_name = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record of a library: ignore it
            return
        if record.exc_info and record.exc_info[1] is not None:
            text += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
        self.lines.append(text)
        if NO_NAME.search(text) and not METADATA.search(text):
            self.no_name.set()


def _probe_path(uri: str) -> str:
    """The part of ``uri`` before any glob or brace pattern (what can be asked as one path)."""
    m = GLOB.search(uri)
    return uri if m is None else uri[:m.start()]


def _one_line(text: str, limit: int = 240) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _protocol(uri: str) -> Optional[str]:
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", uri)
    return m.group(1).lower() if m else None


def missing_filesystem(flag: str, uri: str) -> Optional[str]:
    """The line for a cloud path whose fsspec filesystem is not installed, or None."""
    import fsspec

    protocol = _protocol(uri)
    store = STORES.get(protocol or "")
    if store is None:
        return None
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError:
        return (f"{flag} {uri}: reading {protocol}:// ({store.name}) needs the {store.package} package, which is not "
                f"installed; from the finehard checkout: pip install -e '.[{store.extra}]'")
    return None


def _explain(flag: str, uri: str, store: Store, error: Optional[BaseException], lines: Sequence[str],
             timed_out: bool, waited: float) -> str:
    said = " ".join(lines)
    lines = [ln for ln in lines if not METADATA.search(ln)]
    last = next((ln for ln in reversed(lines) if UNREACHABLE.search(ln) or DENIED.search(ln)),
                lines[-1] if lines else "")
    detail = _one_line(f"{type(error).__name__}: {error}" if error is not None else last)
    everything = f"{' '.join(lines)} {detail}"
    fix_network = "check the network (DNS, proxy, firewall)"
    fix_credentials = f"give credentials ({store.credentials})"
    head = f"{flag} {uri}: {store.name} ({store.package})"
    if UNREACHABLE.search(everything):
        creds = "; no credentials were found either" if NO_CREDENTIALS.search(said) else ""
        return f"{head} cannot be reached: {detail}{creds}. Fix: {fix_network}; then {fix_credentials} if needed"
    if NO_CREDENTIALS.search(everything) and not timed_out:
        return f"{head}: no credentials ({detail}). Fix: {fix_credentials}"
    if DENIED.search(everything) and not timed_out:
        return (f"{head} refused the credentials ({detail}). Fix: {fix_credentials} of an account that may use "
                "this path")
    if timed_out:
        creds = " (no credentials were found)" if NO_CREDENTIALS.search(said) else ""
        return (f"{head} did not answer within {waited:.0f} s{creds}" + (f": {detail}" if detail else "") +
                f". Fix: {fix_network} and {fix_credentials}")
    return f"{head} failed: {detail}. Fix: {fix_network} and {fix_credentials}"


BEAM_PATH_FLAGS = ("--temp_location", "--staging_location")  # Dataflow's own GCS client reads them


def beam_paths(beam_args: Sequence[str]) -> dict[str, str]:
    """The values of :data:`BEAM_PATH_FLAGS` among Beam's flags (``--flag X`` or ``--flag=X``)."""
    found = {}
    for i, arg in enumerate(beam_args):
        name, _, value = arg.partition("=")
        if name in BEAM_PATH_FLAGS:
            value = value or (beam_args[i + 1] if i + 1 < len(beam_args) else "")
            if value:
                found[name] = value
    return found


def check_cloud_paths(paths: Mapping[str, Optional[str]], timeout: Optional[float] = None) -> None:
    """Ask every object-store path of ``paths`` (flag -> URI; others are skipped) once, at the same time;
    raise :class:`CloudPathError` with one line for the first that cannot be used. Returns in at most
    ``timeout`` seconds (default :data:`CHECK_S`). A Beam flag's path (:data:`BEAM_PATH_FLAGS`) is
    asked only when its fsspec filesystem is installed: Beam reads it with its own client."""
    todo = _paths_to_ask(paths)
    if not todo:
        return
    import fsspec  # noqa: F401 - imported here, before the clock starts, not by each asking thread

    timeout = CHECK_S if timeout is None else timeout
    capture = _Capture()
    loggers = {name for _, uri in todo for name in STORES[_protocol(uri) or ""].loggers}
    saved = {name: (logging.getLogger(name).level, logging.getLogger(name).propagate) for name in loggers}
    for name in loggers:
        lg = logging.getLogger(name)
        lg.addHandler(capture)
        lg.setLevel(logging.DEBUG)
        lg.propagate = False
    results: dict[str, Any] = {}
    threads = [threading.Thread(target=_ask, args=(*item, results), name=f"finehard-check-{item[0]}", daemon=True)
               for item in todo]
    started = time.monotonic()
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads) and not capture.no_name.is_set():
            if time.monotonic() - started >= timeout:
                break
            time.sleep(0.05)
        waited = time.monotonic() - started
        for flag, uri in todo:
            store = STORES[_protocol(uri) or ""]
            if flag in results and results[flag] is None:
                _answered.add(uri)
                continue
            error = results.get(flag)
            answered = flag in results
            raise CloudPathError(_explain(flag, uri, store, error, capture.lines, not answered, waited))
    finally:
        if not any(t.is_alive() for t in threads):  # a request still retrying keeps its logs to itself
            for name, (level, propagate) in saved.items():
                lg = logging.getLogger(name)
                lg.removeHandler(capture)
                lg.setLevel(level)
                lg.propagate = propagate


def _paths_to_ask(paths: Mapping[str, Optional[str]]) -> list[tuple[str, str]]:
    """The ``(flag, uri)`` object-store paths not yet answered; raises for a store whose filesystem is missing
    (a Beam flag's path is then left to Beam's own client)."""
    todo = []
    for flag, uri in paths.items():
        if not uri or _protocol(uri) not in STORES or uri in _answered:
            continue
        line = missing_filesystem(flag, uri)
        if line and flag not in BEAM_PATH_FLAGS:
            raise CloudPathError(line)
        if not line:
            todo.append((flag, uri))
    return todo


def _ask(flag: str, uri: str, results: dict[str, Any]) -> None:
    """One store's answer for ``uri`` into ``results[flag]``: None when it answered (a missing object is an
    answer), else the exception."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(_probe_path(uri))
        fs.info(path)
        results[flag] = None
    except FileNotFoundError:
        results[flag] = None  # the store answered
    except BaseException as e:  # noqa: BLE001 - every failure is explained in one line
        results[flag] = e
