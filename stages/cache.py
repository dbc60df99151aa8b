"""Model answers kept in a folder so that a re-run does not pay for them twice (``--model-cache``).

One small json object per answer, at ``ROOT/<stage>/<k[:2]>/<k>.json`` where ``k`` hashes the
stage, the engine's provenance (engine, model, prompt hash, options such as ``max_side``; never
the run id) and the input (the image bytes; the image bytes and its expressions; the expression).
What is kept is the engine's raw answer before the stage's own selection, so changing e.g.
``--box-conf`` or ``--max-caption-chars`` still reads the cache; changing the model, the prompt
or an engine option does not. Only successful answers are kept: failures are asked again.

ROOT is a local folder or any fsspec URI (``gs://bucket/cache``): every worker of a distributed
run reads and writes the same cache. Entries are written whole (local: temp file + rename), so a
reader never sees half an answer. An entry that cannot be used counts as a miss: missing, not a
regular file (a folder, a FIFO, a link to a device), larger than ``MAX_ENTRY_BYTES``, not JSON,
not ``{"answer": ...}``, or an answer of a type the stage cannot use (``cached_answers`` checks
hits with the stage's ``keep``). An entry that cannot be written is logged and skipped: the cache
never fails a sample.

fsspec (and ``core.files``, which imports it) is imported on a cache's first use: half a second that
what only needs a stage's registry (``finehard negatives --help``) does not pay.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import stat
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

if TYPE_CHECKING:
    import fsspec

LOG = logging.getLogger("transforms.cache")  # the name these lines always had
MAX_ENTRY_BYTES = 16 * 1024 * 1024  # an answer is a caption, boxes or ten negatives: far below this


def digest(*parts: bytes | str) -> str:
    """sha256 over the parts, each length-prefixed so that ("ab", "c") and ("a", "bc") differ."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


class ModelCache:
    """Get and put answers by (stage, provenance, input digest). Pickles as its root URI only."""

    def __init__(self, root: str):
        self.root = root
        self._resolved: Optional[tuple[fsspec.AbstractFileSystem, str]] = None  # (filesystem, root path), on first use

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["root"])

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self._fs_and_base()[0]

    def _fs_and_base(self) -> tuple[fsspec.AbstractFileSystem, str]:
        if self._resolved is None:
            import fsspec  # on first use (see the module's docstring)

            self._resolved = fsspec.core.url_to_fs(self.root)
        return self._resolved

    def _is_local(self) -> bool:
        from fsspec.implementations.local import LocalFileSystem

        return isinstance(self.fs, LocalFileSystem)

    def key(self, stage: str, provenance: dict[str, Any], input_digest: str) -> str:
        prov = {k: v for k, v in provenance.items() if k != "run"}
        return digest(stage, json.dumps(prov, sort_keys=True, default=str), input_digest)

    def path(self, stage: str, key: str) -> str:
        return posixpath.join(self._fs_and_base()[1], stage, key[:2], f"{key}.json")

    def _read_entry(self, path: str) -> Optional[bytes]:
        """The entry's bytes; None when it is not a regular file or is too large (a miss)."""
        if self._is_local():
            # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then says what was opened.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_ENTRY_BYTES:
                    return None
                data = f.read(MAX_ENTRY_BYTES + 1)
        else:
            with self.fs.open(path, "rb") as f:
                data = f.read(MAX_ENTRY_BYTES + 1)
        return None if len(data) > MAX_ENTRY_BYTES else data

    def get_many(self, stage: str, keys: Sequence[str]) -> dict[str, Any]:
        """The cached answers among ``keys`` (misses absent; an unusable entry is a miss)."""
        found: dict[str, Any] = {}
        for key in dict.fromkeys(keys):
            path = self.path(stage, key)
            try:
                data = self._read_entry(path)
                if data is None:
                    continue
                entry = json.loads(data)
                if isinstance(entry, dict) and "answer" in entry:
                    found[key] = entry["answer"]
            except (OSError, ValueError, RecursionError):  # missing, a folder, unreadable, not json
                continue
        return found

    def put_many(self, stage: str, answers: dict[str, Any]) -> None:
        for key, answer in answers.items():
            path = self.path(stage, key)
            try:
                data = json.dumps({"answer": answer}, ensure_ascii=False).encode("utf-8")
                self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
                if self._is_local():
                    from core.files import atomic_write  # on first use (see the module's docstring)

                    atomic_write(self.fs, path, data)
                else:
                    with self.fs.open(path, "wb") as f:  # object stores publish an object only when complete
                        f.write(data)
            except (OSError, ValueError, TypeError) as e:  # e.g. a folder where the entry goes: not kept
                LOG.warning("model cache: could not keep %s: %s: %s", path, type(e).__name__, e)


def model_cache(root: Optional[str]) -> Optional[ModelCache]:
    return ModelCache(root) if root else None


def cached_answers(cache: Optional[ModelCache], stage: str, provenance: dict[str, Any], n: int,
                   digest_of: Callable[[int], str], ask: Callable[[list[int]], Sequence[Any]],
                   keep: Callable[[Any], bool]) -> tuple[list[Any], list[bool]]:
    """One answer for each of ``n`` inputs: from ``cache`` where it has one, else ``ask(indices of the misses)``.

    ``digest_of(i)`` names input ``i`` (called only with a cache). Returns ``(answers, from_cache)``;
    new answers for which ``keep`` is true are stored, and a cached answer for which ``keep`` is false
    (an entry of the wrong type) is a miss. Without a cache this is ``ask(all indices)``.
    """
    if cache is None:
        return list(ask(list(range(n)))), [False] * n
    keys = [cache.key(stage, provenance, digest_of(i)) for i in range(n)]
    hits = {k: v for k, v in cache.get_many(stage, keys).items() if _keeps(keep, v)}
    answers: list[Any] = [hits.get(k) for k in keys]
    from_cache = [k in hits for k in keys]
    missing = [i for i in range(n) if not from_cache[i]]
    if missing:
        fresh = list(ask(missing))
        if len(fresh) != len(missing):
            raise RuntimeError(f"{stage} engine gave {len(fresh)} answers for {len(missing)} inputs")
        for i, answer in zip(missing, fresh):
            answers[i] = answer
        cache.put_many(stage, {keys[i]: to_json(a) for i, a in zip(missing, fresh) if keep(a)})
    return answers, from_cache


def _keeps(keep: Callable[[Any], bool], answer: Any) -> bool:
    try:
        return bool(keep(answer))
    except Exception:  # noqa: BLE001 - a check that trips over a malformed answer says no
        return False


def to_json(answer: Any) -> Any:
    """Tuples (boxes) as lists: what comes back from the cache is what json gives."""
    return json.loads(json.dumps(answer))
