"""A folder or glob of images with ``.txt``/``.json`` captions beside them (img2dataset's and WebDataset's
file layout) keeps its captions as the same files in a tar do, and a caption file is never an item."""
from __future__ import annotations

import io
import json
import pathlib
import tarfile

from PIL import Image

from conftest import read_shards, run_pipeline


def _image(fmt: str, colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), colour).save(buf, fmt)
    return buf.getvalue()


# the img2dataset layout: image + .txt (the alt-text) + .json (its metadata), and variations
FILES = {
    "0001.jpg": _image("JPEG", (200, 10, 10)),
    "0001.txt": "a red card on a table\n".encode(),
    "0001.json": json.dumps({"key": "0001", "caption": "ignored: the .txt wins", "url": "http://example.com/1.jpg",
                             "status": "success"}).encode(),
    "0002.png": _image("PNG", (10, 200, 10)),
    "0002.json": json.dumps({"caption": "a green card", "url": "http://example.com/2.png"}).encode(),
    "0003.webp": _image("WEBP", (10, 10, 200)),  # sorts after its .txt
    "0003.txt": "\ufeffa blue card".encode(),
    "0004.jpg": _image("JPEG", (90, 90, 90)),  # no caption
    "notes.txt": b"not a caption: no image is called notes",
}


def _folder(tmp_path: pathlib.Path) -> pathlib.Path:
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    for name, data in FILES.items():
        (d / name).write_bytes(data)
    (d / "sub" / "0005.jpg").write_bytes(_image("JPEG", (200, 200, 10)))
    (d / "sub" / "0005.TXT").write_bytes(b"a yellow card")
    return d


EXPECTED = {"0001": ("a red card on a table\n", "http://example.com/1.jpg"),
            "0002": ("a green card", "http://example.com/2.png"),
            "0003": ("a blue card", None), "0004": ("", None)}


def _records(input_uri: str, files_per_unit: int = 256) -> dict[str, dict]:
    from inputs.reader import read_and_count
    from inputs.units import list_units

    out = {}
    for unit in list_units(input_uri, files_per_unit=files_per_unit):
        for rec in read_and_count(unit):
            assert rec["key"] not in out
            out[rec["key"]] = rec
    return out


def test_a_folder_of_images_reads_its_sidecar_captions_and_never_counts_them(tmp_path: pathlib.Path) -> None:
    from core.record import Field
    from pipeline.progress_view import expected_samples
    from inputs.units import list_units

    d = _folder(tmp_path)
    for per_unit in (256, 1):  # an image's sidecars travel in its read unit, however the listing is cut
        units = list_units(str(d), files_per_unit=per_unit)
        assert sum(len(u.uris) for u in units) == 6  # 5 images and notes.txt: no sidecar is an item
        assert expected_samples(units) == 6
        recs = _records(str(d), per_unit)
        sub = next(k for k in recs if k.startswith("sub_0005"))  # sub/0005: a key with a hash of its path
        assert sorted(recs) == ["0001", "0002", "0003", "0004", "notes", sub]
        for key, (caption, url) in EXPECTED.items():
            assert recs[key]["short_caption"] == caption, key
            assert recs[key].get("source_url") == url
            assert Field.DEAD not in recs[key] and Field.FILTERED not in recs[key]
        assert recs[sub]["short_caption"] == "a yellow card"  # .TXT as a tar's member would be
        assert recs["notes"][Field.FILTERED]["reason"] == "unsupported_format"  # no image: an item of its own


def test_folder_sidecars_give_the_same_records_as_the_same_files_in_a_tar(tmp_path: pathlib.Path) -> None:
    d = _folder(tmp_path)
    tar_path = tmp_path / "same.tar"
    with tarfile.open(tar_path, "w") as tar:
        for name in sorted(FILES, key=lambda n: (n.split(".")[0], n)):  # a tar groups a sample's members
            if name != "notes.txt":
                tar.add(d / name, arcname=name)
    from_tar = _records(str(tar_path))
    from_folder = _records(str(d))
    for key in EXPECTED:
        for field in ("short_caption", "source_url"):
            assert from_folder[key].get(field) == from_tar[key].get(field), (key, field)


def test_globs_find_the_sidecars_beside_their_images_or_among_the_matches(tmp_path: pathlib.Path) -> None:
    d = _folder(tmp_path)
    for pattern in ("*.jpg", "*", "000[1-4].*"):  # "*" matched .json files too: once "mixes manifest and files"
        recs = _records(str(d / pattern))
        assert recs["0001"]["short_caption"] == "a red card on a table\n", pattern
        assert not any(k.startswith("0001_") or k == "0001_json" for k in recs), (pattern, sorted(recs))
    assert sorted(_records(str(d / "*.jpg"))) == ["0001", "0004"]


def test_a_broken_json_sidecar_dead_letters_its_image_with_the_file_named(tmp_path: pathlib.Path) -> None:
    from core.record import Field

    d = tmp_path / "in"
    d.mkdir()
    (d / "a.jpg").write_bytes(_image("JPEG", (1, 2, 3)))
    (d / "a.json").write_bytes(b"{not json")
    (d / "b.jpg").write_bytes(_image("JPEG", (3, 2, 1)))
    (d / "b.json").write_bytes(b"[1, 2]")
    recs = _records(str(d))
    assert set(recs) == {"a", "b"}
    for key in ("a", "b"):
        dead = recs[key][Field.DEAD]
        assert dead["reason"] == "bad_member_json" and f"{key}.json" in dead["detail"]


def test_a_caption_file_added_beside_an_image_changes_the_input_fingerprint(tmp_path: pathlib.Path) -> None:
    from shards.outdir import input_fingerprint
    from inputs.units import list_units

    d = _folder(tmp_path)
    before = input_fingerprint(list_units(str(d)))
    (d / "0004.txt").write_bytes(b"a grey card")
    after = input_fingerprint(list_units(str(d)))
    assert before != after and before["listed_uris"] == after["listed_uris"] == 6


def test_a_run_over_a_folder_with_sidecars_reconciles_and_writes_the_captions(tmp_path: pathlib.Path) -> None:
    d = _folder(tmp_path)
    one = run_pipeline(str(d), tmp_path / "one", "--stages", "ingest", "--samples-per-shard", "2")
    assert (one["read"], one["written"], one["filtered"], one["reconciled"]) == (6, 5, 1, True)
    assert one["filtered_by_reason"] == {"read:unsupported_format": 1}
    captions = {s["__key__"][:8]: s["record"]["short_caption"] for s in read_shards(tmp_path / "one")}
    assert captions == {**{k: v[0] for k, v in EXPECTED.items()}, "sub_0005": "a yellow card"}
    # a local run in waves (each wave reads only its shards' images and their sidecars) writes the same bytes
    waves = run_pipeline(str(d), tmp_path / "waves", "--stages", "ingest", "--samples-per-shard", "2",
                         "--wave-samples", "2")
    assert waves["read"] == 6 and waves["reconciled"] is True
    for p in sorted((tmp_path / "one").glob("shard-*.tar")):
        assert (tmp_path / "waves" / p.name).read_bytes() == p.read_bytes()


def test_a_remote_folder_reads_its_sidecars_too() -> None:
    """A folder on an fsspec filesystem (gs://, s3://; here memory://) is listed whole, by another path."""
    import fsspec

    fs = fsspec.filesystem("memory")
    root = "/sidecar-test"
    try:
        for name in ("0001.jpg", "0001.txt", "0001.json", "0002.png", "0002.json", "0004.jpg"):
            fs.pipe(f"{root}/{name}", FILES[name])
        recs = _records(f"memory://{root}")
        assert sorted(recs) == ["0001", "0002", "0004"]
        assert [recs[k]["short_caption"] for k in sorted(recs)] == ["a red card on a table\n", "a green card", ""]
        assert recs["0002"]["source_url"] == "http://example.com/2.png"
    finally:
        fs.rm(root, recursive=True)
