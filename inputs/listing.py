"""What :mod:`inputs.units` lists with: a local folder walked in sorted order one folder at a time, each image's
sidecars (``0001.txt``/``0001.json`` beside ``0001.jpg``), and the files whose keys would clash."""
from __future__ import annotations

import os
import posixpath
from collections import Counter
from typing import Callable, Iterable, Iterator

import fsspec

from inputs.names import _relative_stem, has_image_ext

SIDECAR_EXTS = (".txt", ".json")  # what a tar sample's members add to its image (short caption, url, our record)


def _clashing(uris: list[str], root: str) -> tuple[str, ...]:
    """The files whose extension-less key another file of the input shares (``b.jpg`` and ``b.png``)."""
    stems = Counter(_relative_stem(u, root) for u in uris)
    return tuple(u for u in uris if stems[_relative_stem(u, root)] > 1)


def _sorted_local_files(folder: str, select: Callable[[str], bool],
                        sidecars: bool = False) -> Iterator[tuple[str, bool, bool, tuple[str, ...]]]:
    """``(path, selected, clashes, its sidecars)`` of every entry under the local ``folder`` that is not
    a folder, in the order of ``sorted(LocalFileSystem().find(folder))``, holding one folder's names at a time.

    What fsspec's ``find`` lists: links (not followed), FIFOs and the like are entries, a folder
    that cannot be listed is left out. Its order is that of the whole path strings; walking each
    folder in the order of its names, a sub-folder's name taken with its ``/``, gives the same
    (a folder's paths all start with ``name/``, and ``/`` sorts where it does in the full path).
    ``clashes``: another selected file of the same folder has the same name without extension
    (what :func:`_clashing` finds: such keys only meet within one folder). With ``sidecars`` (a
    folder of images) the caption files of an image (:data:`SIDECAR_EXTS`) come with it and are
    not entries of their own. The walk keeps its own stack of open folders, so any depth is
    listed (no recursion limit).
    """
    def entries_of(path: str) -> Iterator[tuple[str, str, bool, set[str], tuple[str, ...]]]:
        try:
            with os.scandir(path) as entries:
                names = [e.name + "/" if e.is_dir(follow_symlinks=False) else e.name for e in entries]
        except OSError:
            return
        names.sort()
        selected = bytearray(not n.endswith("/") and select(os.path.join(path, n)) for n in names)
        side = _sidecar_flags(names, selected) if sidecars else bytearray(len(names))
        any_side = any(side)
        clash = _repeated_stems(names, bytearray(c and not s for c, s in zip(selected, side)) if any_side
                                else selected)
        for i, (name, chosen) in enumerate(zip(names, selected)):
            if side[i]:
                continue
            own = (tuple(os.path.join(path, n) for n in _same_stem(names, name, side))
                   if any_side and chosen and has_image_ext(name) else ())
            yield path, name, bool(chosen), clash, own

    stack = [entries_of(folder)]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        path, name, chosen, clash, own = entry
        if name.endswith("/"):
            stack.append(entries_of(os.path.join(path, name[:-1])))
        else:
            clashes = bool(chosen and clash) and os.path.splitext(name)[0] in clash
            yield os.path.join(path, name), chosen, clashes, own


def _same_stem(names: list[str], name: str, among: bytearray) -> Iterator[str]:
    """The other names of the sorted ``names`` flagged in ``among`` whose name without extension is
    ``name``'s; they all start with that stem and a dot, so they sit together in sorted order."""
    import bisect

    stem = os.path.splitext(name)[0]
    i = bisect.bisect_left(names, stem + ".")
    while i < len(names) and names[i].startswith(stem + "."):
        if among[i] and names[i] != name and os.path.splitext(names[i])[0] == stem:
            yield names[i]
        i += 1


def _sidecar_flags(names: list[str], selected: bytearray) -> bytearray:
    """1 for each of one folder's sorted ``names`` that is a sidecar: a ``.txt``/``.json`` file whose name
    without extension is that of a selected image of the folder (``0001.txt`` beside ``0001.jpg``)."""
    images = bytearray(bool(chosen) and has_image_ext(n) for n, chosen in zip(names, selected))
    flags = bytearray(len(names))
    for i, n in enumerate(names):
        if not n.endswith("/") and not images[i] and os.path.splitext(n)[1].lower() in SIDECAR_EXTS:
            flags[i] = any(True for _ in _same_stem(names, n, images))
    return flags


def sidecars_of(paths: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """image path -> its sidecars, among ``paths`` (a whole listing: a glob's, a remote folder's)."""
    by_stem: dict[str, list[str]] = {}
    images: list[str] = []
    for p in sorted(paths):
        if has_image_ext(p):
            images.append(p)
        elif posixpath.splitext(p)[1].lower() in SIDECAR_EXTS:
            by_stem.setdefault(posixpath.splitext(p)[0], []).append(p)
    return {p: tuple(by_stem[posixpath.splitext(p)[0]]) for p in images if posixpath.splitext(p)[0] in by_stem}


def _repeated_stems(names: list[str], selected: bytearray) -> set[str]:
    """The names without extension that two or more selected ``names`` share, with 8 bytes per name
    held: their hashes first, then only the names whose hash repeats are compared as text."""
    import numpy as np

    def stems() -> Iterator[str]:
        return (os.path.splitext(n)[0] for n, chosen in zip(names, selected) if chosen)

    hashes = np.fromiter((hash(s) for s in stems()), dtype=np.int64)
    hashes.sort()
    repeated = set(hashes[1:][hashes[1:] == hashes[:-1]].tolist())
    if not repeated:
        return set()
    counts = Counter(s for s in stems() if hash(s) in repeated)
    return {s for s, n in counts.items() if n > 1}


def _glob_sidecars(fs: fsspec.AbstractFileSystem, matched: list[str]) -> dict[str, tuple[str, ...]]:
    """The sidecars of a glob's images: matched too (``dir/*``) or only beside them (``dir/*.jpg``)."""
    matched_images = [p for p in matched if has_image_ext(p)]
    near = set(matched)
    for folder in sorted({posixpath.dirname(p) for p in matched_images}):
        try:
            near.update(p for p in fs.ls(folder, detail=False) if posixpath.splitext(p)[1].lower() in SIDECAR_EXTS)
        except OSError:
            continue
    found = sidecars_of(near)
    return {p: found[p] for p in matched_images if p in found}


def _without_sidecars(paths: list[str], side: dict[str, tuple[str, ...]]) -> list[str]:
    taken = {s for sc in side.values() for s in sc}
    return [p for p in paths if p not in taken]
