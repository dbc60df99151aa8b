"""Reading a WebDataset tar (img2dataset layout) as a stream: its members grouped into samples, one record each."""
from __future__ import annotations

import json
import posixpath
import tarfile
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

from core.files import unsafe_member_problem
from core.outcomes import mark_dead
from core.record import IMAGE_EXTS, MAX_IMAGE_BYTES, TAR_ERROR_KEY_SUFFIX, Field, SampleError, make_key
from inputs.opening import open_input, source_of
from inputs.records import STAGE, _not_object, is_finehard_record, new_record, shard_record_problem
from inputs.units import ReadUnit

TAR_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp") + tuple(e for e in IMAGE_EXTS if e not in ("jpg", "jpeg", "png", "webp"))


@dataclass
class _Member:
    name: str            # full member name
    data: Optional[bytes]  # None: larger than the byte limit, not read
    size: int
    offset: Optional[int] = None  # where its bytes start in the tar file, when the tar can be range-read


def _records_from_tar(unit: ReadUnit, max_bytes: int = MAX_IMAGE_BYTES,
                      want: Optional[Callable[[str], bool]] = None) -> Iterator[dict[str, Any]]:
    """img2dataset layout: ``<key>.jpg`` + optional ``<key>.txt`` and ``<key>.json``, grouped by key.

    A sample is the run of consecutive members with the same full path stem (``dirA/000001`` and
    ``dirB/000001`` are two samples; a file name's leading dots belong to its stem, so ``.x.jpg``
    is sample ``.x``, key ``x_<hash>``). Its key is the stem's file name as before (``000001``); when
    an earlier sample of this tar has that key, the whole stem (``dirB_000001_<hash>``), then the
    stem and its position. Of two images in one sample (``000002.jpg`` and ``000002.png``) the first
    of ``TAR_IMAGE_EXTS`` is the sample and each other one is dead-lettered as
    ``duplicate_image_member``; so is an image that comes back later in the tar, after other samples.
    Other members that come back later (a ``000001.txt`` far from ``000001.jpg``) are ``split_sample``:
    a tar is read as a stream, so the members of a sample must be next to each other.
    A member over the byte limit is not read (``file_too_large``).

    Returns (as the generator's value) how many items the tar held, counted from its members as
    they stream by, apart from the grouping: each run of members with one stem, each further
    image of a run, each unsafe member, and a tar that could not be read to its end. The reader
    must have yielded exactly that many records (:func:`inputs.reader.read_and_count` writes this count).
    A tar is a stream: every member is read whatever ``want`` says (a sample's key may come from
    its ``.json``); :func:`inputs.reader.read_and_count` drops the others' records before they are decoded.
    The image of an uncompressed tar on a local or fsspec filesystem keeps ``Field.SOURCE =
    (tar, offset, size)``: later stages read it back with one range read.
    """
    return (yield from _TarSamples(unit.uris[0], max_bytes).read())


def _member_stem(member_name: str) -> tuple[str, str]:
    """The sample stem and the lower-case extension of a member: ``./dirA/000001.JPG`` is ``dirA/000001``, ``jpg``."""
    while member_name.startswith("./"):  # "./000001.jpg" is "000001.jpg" (tar -C dir .)
        member_name = member_name[2:]
    folder, _, name = member_name.rpartition("/")
    dots = len(name) - len(name.lstrip("."))  # ".x.jpg" is sample ".x", never an empty stem
    base, _, ext = name[dots:].partition(".")
    base = name[:dots] + base
    stem = f"{folder}/{base}" if folder else base
    return stem, ext.lower()


def _member_json(members: dict[str, _Member]) -> tuple[dict[str, Any], Optional[str]]:
    """The sample's ``.json`` member as an object (``{}`` without one), or why it is not one (``bad_member_json``)."""
    if "json" not in members:
        return {}, None
    try:
        meta = json.loads(members["json"].data)
    except (ValueError, RecursionError) as e:
        return {}, f"{members['json'].name}: not JSON: {e}"
    if not isinstance(meta, dict):
        return {}, f"{members['json'].name}: {_not_object(meta)}"
    return meta, None


def _shard_record(meta: dict[str, Any], uri: str, stem: str) -> dict[str, Any]:
    """The record of a sample from one of our own shards: its identity and every field it carries."""
    rec = new_record(make_key(str(meta.get("key") or stem.rsplit("/", 1)[-1])),
                     str(meta.get("f_path") or f"{uri}#{stem}"), str(meta.get("short_caption") or ""))
    rec[Field.INPUT_RECORD] = {f: meta[f] for f in ("caption", "bbox_info", "provenance") if f in meta}
    if meta.get("caption"):
        rec[Field.INPUT_CAPTION] = str(meta["caption"])
    return rec


class _TarSamples:
    """The samples of one tar as its members stream by (see :func:`_records_from_tar`): members grouped by stem,
    each group flushed as records when the next stem begins, keys kept unique, and the tar's items counted."""

    def __init__(self, uri: str, max_bytes: int):
        self.uri, self.max_bytes = uri, max_bytes
        self.where: Optional[str] = None  # Field.SOURCE's name for this tar, when its members can be range-read
        self.used: set[str] = set()
        self.seen: set[str] = set()
        self.seen_with_image: set[str] = set()
        self.groups = 0
        self.held = 0  # items the tar holds, counted from its members (see _records_from_tar), not from flush()
        self.current: Optional[str] = None
        self.members: dict[str, _Member] = {}

    def read(self) -> Iterator[dict[str, Any]]:
        """Every record of the tar; returns how many items it held (a tar that cannot be read to its end is one)."""
        uri = self.uri
        try:
            with open_input(uri) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
                if getattr(tar.fileobj, "comptype", None) == "tar":  # offsets in a .tar.gz are in the unzipped stream
                    self.where = source_of(uri)
                for ti in tar:
                    if ti.isdir():
                        continue
                    yield from self.take(tar, ti)
        except (OSError, tarfile.TarError, EOFError, SampleError, ValueError) as e:
            self.held += 1
            rec = new_record(make_key(posixpath.basename(uri) + TAR_ERROR_KEY_SUFFIX), uri)
            reason = e.reason if isinstance(e, SampleError) else "unreadable_tar"
            yield mark_dead(rec, STAGE, reason, e.detail if isinstance(e, SampleError) else f"{type(e).__name__}: {e}")
        yield from self.flush(self.current, self.members)
        return self.held

    def take(self, tar: tarfile.TarFile, ti: tarfile.TarInfo) -> Iterator[dict[str, Any]]:
        """One member: an unsafe one dead-lettered; else added to its sample, the last sample flushed first
        when this member begins another."""
        uri = self.uri
        problem = unsafe_member_problem(ti)
        if problem:
            self.held += 1
            rec = new_record(make_key(ti.name.rsplit("/", 1)[-1].partition(".")[0] or "member", ti.name),
                             f"{uri}#{ti.name}")
            yield mark_dead(rec, STAGE, "unsafe_tar_member", f"{problem}: {ti.name!r}")
            return
        stem, ext = _member_stem(ti.name)
        if stem != self.current:
            self.held += 1
            yield from self.flush(self.current, self.members)
            self.current, self.members = stem, {}
        elif ext in TAR_IMAGE_EXTS and any(e in self.members for e in TAR_IMAGE_EXTS):
            self.held += 1  # a second image of this sample: dead-lettered, one item more
        max_bytes = self.max_bytes
        data = tar.extractfile(ti).read(max_bytes + 1) if ti.size <= max_bytes else None
        offset = ti.offset_data if self.where is not None and not ti.issparse() else None  # sparse: not contiguous
        member = _Member(ti.name, data, ti.size, offset)
        if ext in self.members:  # 000001.JPG next to 000001.jpg: never overwrite one with the other
            if ext in TAR_IMAGE_EXTS:
                rec = new_record(make_key(f"{stem}.{ext}", f"{uri}#{ti.name}"), f"{uri}#{ti.name}",
                                 key_source=stem)
                yield mark_dead(rec, STAGE, "duplicate_image_member",
                                f"{ti.name}: sample {stem} already has {self.members[ext].name}")
            return
        self.members[ext] = member

    def key_for(self, stem: str) -> str:
        base = stem.rsplit("/", 1)[-1]
        key = make_key(base)
        if key in self.used:
            key = make_key(stem)
        if key in self.used:
            key = make_key(stem, f"{stem}#{self.groups}")
        self.used.add(key)
        return key

    def flush(self, stem: Optional[str], members: dict[str, _Member]) -> Iterator[dict[str, Any]]:
        """The records of one sample (the run of members with ``stem``), or of a sample that came back."""
        if stem is None:
            return
        self.groups += 1
        key = self.key_for(stem)
        images = [e for e in TAR_IMAGE_EXTS if e in members]
        if stem in self.seen_with_image and images:  # 1.jpg, 2.jpg, 1.png: a second image for sample 1
            yield from self.image_again(stem, members, images)
            return
        if stem in self.seen:  # 1.jpg, 2.jpg, 1.txt: the rest of sample 1 comes after another sample
            yield from self.split(stem, members, images)
            return
        self.seen.add(stem)
        if images:
            self.seen_with_image.add(stem)
        uri = self.uri
        for ext in images[1:]:
            m = members[ext]
            extra = new_record(make_key(f"{stem}.{ext}", f"{uri}#{m.name}"), f"{uri}#{m.name}", key_source=stem)
            yield mark_dead(extra, STAGE, "duplicate_image_member",
                            f"{m.name}: sample {stem} already has {members[images[0]].name}")
        yield self.sample(key, stem, members, images)

    def image_again(self, stem: str, members: dict[str, _Member], images: list[str]) -> Iterator[dict[str, Any]]:
        """The images of a sample that already had one earlier in the tar: each ``duplicate_image_member``."""
        for ext in images:
            m = members[ext]
            extra = new_record(make_key(f"{stem}.{ext}", f"{self.uri}#{m.name}#{self.groups}"),
                               f"{self.uri}#{m.name}", key_source=stem)
            yield mark_dead(extra, STAGE, "duplicate_image_member",
                            f"{m.name}: sample {stem} already had an image earlier in the tar")

    def split(self, stem: str, members: dict[str, _Member], images: list[str]) -> Iterator[dict[str, Any]]:
        """Members of a sample that began earlier in the tar, not next to them: ``split_sample``."""
        names = sorted(m.name for m in members.values())
        for m in [members[e] for e in images] or [None]:
            name = m.name if m is not None else names[0]
            split = new_record(make_key(f"{stem}.split", f"{self.uri}#{name}#{self.groups}"), f"{self.uri}#{name}",
                               key_source=stem)
            yield mark_dead(split, STAGE, "split_sample",
                            f"{names}: sample {stem} began earlier in the tar, not next to these members "
                            "(a tar is read as a stream: put each sample's members together, e.g. "
                            "tar --sort=name)")

    def sample(self, key: str, stem: str, members: dict[str, _Member], images: list[str]) -> dict[str, Any]:
        """The record of a sample seen for the first time: its image, captions and url, or why it has none."""
        uri = self.uri
        rec = new_record(key, f"{uri}#{stem}", key_source=stem)
        too_large = [m for m in members.values() if m.data is None]
        if too_large:
            return mark_dead(rec, STAGE, "file_too_large", f"{too_large[0].name}: {too_large[0].size} bytes > "
                                                           f"--max-image-bytes {self.max_bytes}")
        meta, bad = _member_json(members)
        if bad is not None:
            return mark_dead(rec, STAGE, "bad_member_json", bad)
        if is_finehard_record(meta):
            # One of our own shards: keep the record's identity and every field it carries.
            problem = shard_record_problem(meta)
            if problem:
                return mark_dead(rec, STAGE, "bad_shard_record", f"{members['json'].name}: {problem}")
            rec = _shard_record(meta, uri, stem)
        else:
            txt = members["txt"].data.decode("utf-8-sig", "replace") if "txt" in members else ""
            caption = meta.get("caption")
            rec["short_caption"] = txt or (caption if isinstance(caption, str) else "")
        if not images:
            return mark_dead(rec, STAGE, "no_image_member", f"members: {sorted(m.name for m in members.values())}")
        image = members[images[0]]
        rec[Field.IMAGE_BYTES] = image.data
        if image.offset is not None:
            rec[Field.SOURCE] = (self.where, image.offset, image.size)
        if meta.get("url"):
            rec["source_url"] = str(meta["url"])
        return rec
