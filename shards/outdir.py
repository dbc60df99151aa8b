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

from core.files import atomic_write, local_path, open_regular
from core.terminal import printable
from inputs.units import ReadUnit
from shards.markers import DEADLETTER_DIR, DIAGNOSTICS_DIR, FILTERED_DIR, READ_COUNTS_DIR, SHARD_PREFIX

LOG = logging.getLogger("finehard")
LOCK_NAME = ".finehard.lock"
RUN_FILE = "run.json"
# What `--overwrite` removes: the files a run writes, nothing else in the folder.
RUN_OUTPUTS = (f"{SHARD_PREFIX}-*", DEADLETTER_DIR, FILTERED_DIR, DIAGNOSTICS_DIR, READ_COUNTS_DIR, "summary.json", "sizes.json",
               "stats_report.json", RUN_FILE, ".spill-*", "*.tmp-*", ".waves")


class OutputInUse(RuntimeError):
    """Another live run holds the output folder."""


MAX_LOCK_BYTES = 4096  # a lock is one short json line: only this much of the file is ever read
PID_MAX = 1 << 22  # Linux's largest pid_max: no process has a larger pid


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (a pid no process can have is not running)."""
    if not 0 < pid <= PID_MAX:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    except (OverflowError, OSError):
        return False
    return True


def lock_pid(holder: dict[str, Any]) -> Optional[int]:
    """The holder's pid as written by :meth:`OutputLock.acquire` (a number, or its digits as a string), or None."""
    pid = holder.get("pid")
    if isinstance(pid, str) and pid.strip().lstrip("-").isdigit() and len(pid.strip()) < 20:
        pid = int(pid.strip())
    return pid if isinstance(pid, int) and not isinstance(pid, bool) else None


class OutputLock:
    """``OUTPUT/.finehard.lock``, created atomically; a lock whose process is gone (same host) is stale.

    Only the first ``MAX_LOCK_BYTES`` of the file are read. A lock that is not a json object with
    this host's name and a pid (empty, cut short, written by something else) is never removed
    silently: it may be a run's lock being written this very moment. The message says so and
    names the file to delete.
    """

    def __init__(self, output: str):
        self.fs, self.root = fsspec.core.url_to_fs(output)
        self.path = posixpath.join(self.root, LOCK_NAME)
        self.held = False

    def _holder(self) -> tuple[dict[str, Any], Optional[str]]:
        """The lock's holder, or ``({}, why it is not a lock)``."""
        try:
            with open_regular(self.fs, self.path) as f:
                data = f.read(MAX_LOCK_BYTES + 1)
        except FileNotFoundError:
            return {}, None
        except OSError as e:
            return {}, f"it cannot be read ({type(e).__name__}: {e})"
        if len(data) > MAX_LOCK_BYTES:
            return {}, f"it is larger than {MAX_LOCK_BYTES} bytes, so not a lock this program wrote"
        try:
            holder = json.loads(data)
        except (ValueError, RecursionError):
            return {}, "it is empty or not json (being written, or not a lock this program wrote)"
        if not isinstance(holder, dict):
            return {}, "it is not a json object"
        if lock_pid(holder) is None or not isinstance(holder.get("host"), str):
            return {}, "it names no host and pid"
        return holder, None

    def _create(self, body: bytes) -> bool:
        if isinstance(self.fs, LocalFileSystem):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            self.held = True  # ours from here: an interrupt while the body is written still removes it
            with os.fdopen(fd, "wb") as f:
                f.write(body)
            return True
        if self.fs.exists(self.path):  # object stores: no exclusive create; best effort
            return False
        with self.fs.open(self.path, "wb") as f:
            f.write(body)
        return True

    def acquire(self) -> None:
        try:
            self._acquire()
        except BaseException:  # an interrupt after the lock file was created: it is not left behind
            self.release()
            raise

    def _acquire(self) -> None:
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        body = json.dumps(me).encode("utf-8")
        for _ in range(2):
            if self._create(body):
                self.held = True
                return
            holder, malformed = self._holder()
            if malformed:
                raise OutputInUse(f"--output {self.root} holds a lock file {self.path} that is not a valid lock: "
                                  f"{malformed}. If no run is using this folder, delete that file and run again")
            if not holder:
                continue  # removed meanwhile: try again
            pid = lock_pid(holder)
            if holder.get("host") == me["host"] and pid is not None and not _pid_alive(pid):
                LOG.warning("removing a stale lock of pid %s (no longer running): %s", pid, self.path)
                self.fs.rm(self.path)
                continue
            who = (f"a run on {printable(holder.get('host'))} (pid {pid}, started "
                   f"{printable(str(holder.get('started'))[:40])})")
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

    Adding or removing a file changes it; so does rewriting a manifest or a tar. ``content``
    sees a file rewritten in place under the same name and size too: for every local
    file (images included) its size, inode, modification and change times in nanoseconds (a
    rewrite that puts the old mtime back still moves the change time); for a manifest or tar on
    an object store the size, time and etag/md5 its listing gives. Units are added one at a time
    as the listing streams by (:func:`input_fingerprint` for a whole listing).
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._content = hashlib.sha256()
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
            self._content.update(_content_stamp(uri, info).encode("utf-8", "surrogatepass") + b"\0")
        for sidecar in unit.sidecars:  # a caption file added or removed changes the input (not an item)
            h.update(b"sidecar\0" + sidecar.encode("utf-8", "surrogatepass") + b"\0")

    def value(self) -> dict[str, Any]:
        """The fingerprint as run.json holds it."""
        return {"sha256": self._hash.hexdigest(), "listed_uris": self.items, "content": self._content.hexdigest()}


def _content_stamp(uri: str, info: dict[str, Any]) -> str:
    """What changes when the file at ``uri`` is rewritten: ``stat`` to the nanosecond for a local file,
    the listing's size/time/etag/md5 for a manifest or tar elsewhere, "" when nothing is known cheaply."""
    path = local_path(uri)
    if path is not None:
        try:
            st = os.stat(path, follow_symlinks=True)
        except (OSError, ValueError):
            return ""
        return f"{st.st_size} {st.st_ino} {st.st_mtime_ns} {st.st_ctime_ns}"
    return " ".join(str(info.get(k)) for k in ("size", "mtime", "updated", "etag", "ETag", "md5Hash", "md5")
                    if info.get(k) is not None)


def same_input(then: Optional[dict[str, Any]], now: dict[str, Any]) -> bool:
    """The fingerprints agree; ``content`` only where the earlier run took it (an output written before it existed resumes as before)."""
    if not then or any(then.get(k) != now.get(k) for k in ("sha256", "listed_uris")):
        return False
    return "content" not in then or then["content"] == now["content"]


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
