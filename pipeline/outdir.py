"""The output folder a run owns: one run at a time, the input it was made from, what a re-run redoes.

``finehard shards`` takes ``OUTPUT/.finehard.lock`` (host, pid, start time) before it touches
anything in OUTPUT and gives it back at the end, so a second run into the same folder is refused
instead of deleting the first one's files. ``OUTPUT/run.json`` records the configuration and a
fingerprint of the listed input; a re-run resumes only when both match (``--overwrite`` starts
over, removing only the files a run writes).
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import posixpath
import socket
import time
from typing import Any, Iterable, Optional

import fsspec
from fsspec.implementations.local import LocalFileSystem

from core.files import atomic_write
from transforms.read import ReadUnit
from transforms.write import DEADLETTER_DIR, DIAGNOSTICS_DIR, FILTERED_DIR, READ_COUNTS_DIR, SHARD_PREFIX

LOG = logging.getLogger("finehard")
LOCK_NAME = ".finehard.lock"
RUN_FILE = "run.json"
# What `--overwrite` removes: the files a run writes, nothing else in the folder.
RUN_OUTPUTS = (f"{SHARD_PREFIX}-*", DEADLETTER_DIR, FILTERED_DIR, DIAGNOSTICS_DIR, READ_COUNTS_DIR, "summary.json", "sizes.json",
               "stats_report.json", RUN_FILE, ".spill-*", "*.tmp-*", ".waves")


class OutputInUse(RuntimeError):
    """Another live run holds the output folder."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


class OutputLock:
    """``OUTPUT/.finehard.lock``, created atomically; a lock whose process is gone (same host) is stale."""

    def __init__(self, output: str):
        self.fs, self.root = fsspec.core.url_to_fs(output)
        self.path = posixpath.join(self.root, LOCK_NAME)
        self.held = False

    def _holder(self) -> dict[str, Any]:
        try:
            with self.fs.open(self.path, "rt", encoding="utf-8") as f:
                holder = json.load(f)
            return holder if isinstance(holder, dict) else {}
        except (OSError, ValueError):
            return {}

    def _create(self, body: bytes) -> bool:
        if isinstance(self.fs, LocalFileSystem):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(body)
            return True
        if self.fs.exists(self.path):  # object stores: no exclusive create; best effort
            return False
        with self.fs.open(self.path, "wb") as f:
            f.write(body)
        return True

    def acquire(self) -> None:
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        body = json.dumps(me).encode("utf-8")
        for _ in range(2):
            if self._create(body):
                self.held = True
                return
            holder = self._holder()
            same_host = holder.get("host") == me["host"]
            if holder and same_host and isinstance(holder.get("pid"), int) and not _pid_alive(holder["pid"]):
                LOG.warning("removing a stale lock of pid %s (no longer running): %s", holder["pid"], self.path)
                self.fs.rm(self.path)
                continue
            who = (f"a run on {holder.get('host')} (pid {holder.get('pid')}, started {holder.get('started')})"
                   if holder else "another run (its lock file is unreadable)")
            raise OutputInUse(f"--output {self.root} is in use by {who}; wait for it to finish or use another "
                              f"--output. If that run is dead, delete {self.path}")
        raise OutputInUse(f"could not take the lock {self.path}")

    def release(self) -> None:
        if self.held:
            try:
                self.fs.rm(self.path)
            except FileNotFoundError:
                pass
            self.held = False

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class InputFingerprint:
    """What identifies the listed input: every listed URI, and size + modification time of manifests and tars.

    Adding or removing a file changes it; so does rewriting a manifest or a tar. An image file
    rewritten in place under the same name is not noticed (its URI is the same). Units are added
    one at a time as the listing streams by (:func:`input_fingerprint` for a whole listing).
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.items = 0

    def add(self, unit: ReadUnit) -> None:
        h = self._hash
        h.update(f"{unit.kind}\0{unit.root}\0".encode("utf-8", "surrogatepass"))
        for uri in unit.uris:
            h.update(uri.encode("utf-8", "surrogatepass") + b"\0")
            self.items += 1
            if unit.kind != "files" and not uri.lower().startswith(("http://", "https://")):
                try:
                    fs, path = fsspec.core.url_to_fs(uri)
                    info = fs.info(path)
                except (OSError, ImportError, ValueError):
                    info = {}
            else:  # an image, or a manifest/tar over http(s): its URI only (no cheap size/mtime)
                info = {}
            if info:
                h.update(f"{info.get('size')}\0{info.get('mtime') or info.get('updated') or info.get('etag')}\0"
                         .encode("utf-8"))
        for sidecar in unit.sidecars:  # a caption file added or removed changes the input (not an item)
            h.update(b"sidecar\0" + sidecar.encode("utf-8", "surrogatepass") + b"\0")

    def value(self) -> dict[str, Any]:
        """The fingerprint as run.json holds it."""
        return {"sha256": self._hash.hexdigest(), "listed_uris": self.items}


def input_fingerprint(units: Iterable[ReadUnit]) -> dict[str, Any]:
    """The :class:`InputFingerprint` of a listing."""
    fingerprint = InputFingerprint()
    for unit in units:
        fingerprint.add(unit)
    return fingerprint.value()


def read_run_file(output: str) -> Optional[dict[str, Any]]:
    fs, root = fsspec.core.url_to_fs(output)
    try:
        with fs.open(posixpath.join(root, RUN_FILE), "rt", encoding="utf-8") as f:
            found = json.load(f)
        return found if isinstance(found, dict) else None
    except (FileNotFoundError, ValueError):
        return None


def write_run_file(output: str, info: dict[str, Any]) -> None:
    fs, root = fsspec.core.url_to_fs(output)
    atomic_write(fs, posixpath.join(root, RUN_FILE), json.dumps(info, indent=1, sort_keys=True).encode("utf-8"))


def remove_run_outputs(output: str) -> int:
    """``--overwrite``: delete what earlier runs wrote into OUTPUT (and only that); returns how many paths."""
    fs, root = fsspec.core.url_to_fs(output)
    removed = 0
    for pattern in RUN_OUTPUTS:
        for path in fs.glob(posixpath.join(root, pattern)):
            fs.rm(path, recursive=True)
            removed += 1
    return removed


def remove_stale_temp_files(output: str) -> None:
    """Half-written files a killed run (or a full disk) left: ``*.tmp-PID`` and ``*.inprogress``."""
    fs, root = fsspec.core.url_to_fs(output)
    for folder in ("", DEADLETTER_DIR, FILTERED_DIR, READ_COUNTS_DIR):
        for pattern in ("*.tmp-*", "*.inprogress"):
            for path in fs.glob(posixpath.join(root, folder, pattern)):
                fs.rm(path)


def prepare_output(output: str) -> None:
    """Create OUTPUT, or say in one line why it cannot hold a run (a file, not writable)."""
    fs, root = fsspec.core.url_to_fs(output)
    if fs.isfile(root):
        raise NotADirectoryError(f"--output {output} is a file; give a folder (it is created if missing)")
    try:
        fs.makedirs(root, exist_ok=True)
        if isinstance(fs, LocalFileSystem) and not os.access(root, os.W_OK):
            raise PermissionError(errno.EACCES, "not writable")
    except PermissionError as e:
        raise PermissionError(f"--output {output} is not writable ({e.strerror or e}); "
                              "choose a folder you can write to") from e
