"""The launcher (what ``finehard shards`` does before the pipeline runs) lists and counts the input
without holding it: the listing, its units and the input fingerprint stay what they were, so
earlier outputs still resume and shards stay byte-identical."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterable

import pytest

# A folder that exercises the order of a sorted listing ("c-d/" < "c.jpg" < "c/"; a folder "b.k/"
# between the clashing "b.jpg" and "b.png"), same-stem clashes at several depths, files that are
# not images (listed, read later), a manifest and a tar (skipped), links, a FIFO, hidden files. (Its two
# files beside an image of the same name were .txt in 58af404: .tsv now, as a .txt beside an image is now
# that image's caption, not an item: tests/test_sidecars.py.)
FILES = ["00000/000000.jpg", "00000/000001.jpg", "00000/000001.png", "00000/000002.webp", "00001/000000.jpg",
         "00001/000000.tsv", "a.jpg", "a.png", "a/a.jpg", "a/b/c.jpg", "b.jpg", "b.png", "b.k/x.jpg",
         "b-k/y.jpg", "c-d/1.jpg", "c.jpg", "c/1.jpg", "c/1.JPG", "d/e/f/g.jpg", ".hidden.jpg", "E.jpg",
         "\u00e9t\u00e9.jpg", "sp ace.jpg", "z.tsv", "z.jpg", "noext", "m.jsonl", "sub/t.tar", "x.tar.gz",
         "y.1.jpg", "y.2.jpg", "y.jpg"]
DIRS = ["empty", "00002/deeper"]


def make_tree(root: Path) -> Path:
    for name in FILES:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        os.utime(path, (1_700_000_000, 1_700_000_000))
    for name in DIRS:
        (root / name).mkdir(parents=True, exist_ok=True)
    os.symlink(root / "a.jpg", root / "link.jpg")
    os.symlink(root / "00000", root / "dirlink")
    os.mkfifo(root / "pipe")
    try:
        (root / "\udcff.jpg").write_bytes(b"x")  # a name that is not UTF-8
    except (OSError, UnicodeEncodeError):
        pass
    return root


def relative(units: Iterable[Any], root: Path) -> list[tuple[str, list[str], list[str]]]:
    def rel(uri: str) -> str:
        assert uri.startswith(str(root) + "/"), uri
        return uri[len(str(root)) + 1:]

    out = []
    for u in units:
        assert u.root == str(root) and not u.span and u.first_row == 0
        out.append((u.kind, [rel(x) for x in u.uris], [rel(x) for x in u.ext_keys]))
    return out


# What the listing of 58af404 (fsspec ``find``, sorted, then split) gave for ``make_tree``.
LISTED_BY_3 = [
    ("files", [".hidden.jpg", "00000/000000.jpg", "00000/000001.jpg"], ["00000/000001.jpg"]),
    ("files", ["00000/000001.png", "00000/000002.webp", "00001/000000.jpg"], ["00000/000001.png", "00001/000000.jpg"]),
    ("files", ["00001/000000.tsv", "E.jpg", "a.jpg"], ["00001/000000.tsv", "a.jpg"]),
    ("files", ["a.png", "a/a.jpg", "a/b/c.jpg"], ["a.png"]),
    ("files", ["b-k/y.jpg", "b.jpg", "b.k/x.jpg"], ["b.jpg"]),
    ("files", ["b.png", "c-d/1.jpg", "c.jpg"], ["b.png"]),
    ("files", ["c/1.JPG", "c/1.jpg", "d/e/f/g.jpg"], ["c/1.JPG", "c/1.jpg"]),
    ("files", ["dirlink", "link.jpg", "noext"], []),
    ("files", ["pipe", "sp ace.jpg", "y.1.jpg"], []),
    ("files", ["y.2.jpg", "y.jpg", "z.jpg"], ["z.jpg"]),
    ("files", ["z.tsv", "\u00e9t\u00e9.jpg", "\udcff.jpg"], ["z.tsv"]),
    ("skipped", ["m.jsonl", "sub/t.tar", "x.tar.gz"], []),
]


def fingerprint_as_of_58af404(units: Iterable[Any]) -> dict[str, Any]:
    """``shards.outdir.input_fingerprint`` as it was (what earlier outputs' run.json hold)."""
    import fsspec

    h = hashlib.sha256()
    items = 0
    for unit in units:
        h.update(f"{unit.kind}\0{unit.root}\0".encode("utf-8", "surrogatepass"))
        for uri in unit.uris:
            h.update(uri.encode("utf-8", "surrogatepass") + b"\0")
            items += 1
            info: dict[str, Any] = {}
            if unit.kind != "files" and not uri.lower().startswith(("http://", "https://")):
                try:
                    fs, path = fsspec.core.url_to_fs(uri)
                    info = fs.info(path)
                except (OSError, ImportError, ValueError):
                    info = {}
            if info:
                h.update(f"{info.get('size')}\0{info.get('mtime') or info.get('updated') or info.get('etag')}\0"
                         .encode("utf-8"))
    return {"sha256": h.hexdigest(), "listed_uris": items}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = make_tree(tmp_path / "in")
    if not (root / "\udcff.jpg").exists():
        pytest.skip("this filesystem refuses a name that is not UTF-8")
    return root


def test_a_folder_is_listed_in_the_same_order_and_units_as_before(tree: Path) -> None:
    from inputs.units import list_units

    expected = LISTED_BY_3
    assert relative(list_units(str(tree), files_per_unit=3), tree) == expected
    whole = list_units(str(tree))
    assert relative(whole, tree) == [("files", [u for _, uris, _ in expected[:-1] for u in uris],
                                      [u for _, _, keys in expected[:-1] for u in keys]), expected[-1]]


def test_key_clashes_are_decided_on_the_names_even_when_every_hash_collides(tree: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import inputs.listing as listing
    from inputs.units import list_units

    monkeypatch.setattr(listing, "hash", lambda s: 0, raising=False)  # every name's stem hashes alike (_repeated_stems)
    units = list_units(str(tree), files_per_unit=3)
    assert [keys for _, _, keys in relative(units, tree)] == [keys for _, _, keys in LISTED_BY_3]

def test_a_folder_of_manifests_and_a_folder_without_images_are_listed_as_before(tmp_path: Path) -> None:
    from inputs.units import InputError, list_units

    def tree(name: str, files: list[str]) -> Path:
        for f in files:
            (tmp_path / name / f).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name / f).write_bytes(b"{}\n")
        return tmp_path / name

    manifests = tree("m", ["m1.jsonl", "sub/m2.jsonl", "a.json", "readme.txt", "notes", "sub/b.parquet.txt"])
    assert relative(list_units(str(manifests)), manifests) == [
        ("manifest", ["a.json"], []), ("manifest", ["m1.jsonl"], []), ("manifest", ["sub/m2.jsonl"], []),
        ("skipped", ["notes", "readme.txt", "sub/b.parquet.txt"], [])]
    others = tree("o", ["a.txt", "a.csv", "sub/b.txt"])
    assert relative(list_units(str(others), files_per_unit=2), others) == [
        ("files", ["a.csv", "a.txt"], ["a.csv", "a.txt"]), ("files", ["sub/b.txt"], [])]
    mixed = tree("x", ["a.jsonl", "sub/b.tar"])
    with pytest.raises(InputError, match=r"mixes \['manifest', 'tar'\]; point it at one kind of input$"):
        list_units(str(mixed))
    (tmp_path / "e" / "empty").mkdir(parents=True)
    with pytest.raises(InputError, match=r"matched no images, manifests or tars$"):
        list_units(str(tmp_path / "e"))



def test_the_launcher_fingerprints_and_counts_a_folder_as_before(tree: Path) -> None:
    from shards.outdir import input_fingerprint
    from pipeline.input_plan import plan_input
    from inputs.units import list_units

    units = list_units(str(tree))
    plan = plan_input(str(tree))
    assert plan.fingerprint == input_fingerprint(units)
    # what earlier outputs hold is unchanged (they resume); "content" (in-place rewrites) is new beside it
    assert {k: v for k, v in plan.fingerprint.items() if k != "content"} == fingerprint_as_of_58af404(units)
    assert plan.fingerprint["listed_uris"] == plan.size == sum(len(u.uris) for u in units)


# Rows the launcher counted for these manifests when it read them whole (58af404): None is unknown.
COUNTED_AS_OF_58AF404 = {
    "plain.jsonl": (b'{"a":1}\n{"a":2}\n{"a":3}\n', 3),
    "no_trailing_newline.jsonl": (b'{"a":1}\n{"a":2}\n{"a":3}', 3),
    "blank_lines.jsonl": (b'\n{"a":1}\n\n   \n\t\n{"a":2}\n\n', 2),
    "crlf.jsonl": (b'{"a":1}\r\n{"a":2}\r\n\r\n{"a":3}', 3),
    "lone_cr.jsonl": (b'{"a":1}\r{"a":2}\r', 2),
    "u2028.jsonl": ('{"a":"x\u2028y"}\n{"a":"z\x85w"}\n'.encode(), 4),
    "bom.jsonl": (b'\xef\xbb\xbf{"a":1}\n{"a":2}\n', 2),
    "bom_only_line.jsonl": (b'\xef\xbb\xbf\n{"a":2}\n', 2),
    "array.json": (b'  \n [{"a":1},\n {"a":2}, {"a":3}]\n', 3),
    "object.json": (b'{"a":\n 1,\n "b": 2}\n', 3),
    "lines.json": (b'{"a":1}\n{"a":2}\n', 2),
    "bad_array.json": (b'[{"a":1},\n', None),
    "invalid_utf8.jsonl": (b'{"a":"\xff"}\n{"a":2}\n', None),
    "utf16.jsonl": ('{"a":1}\n{"a":2}\n'.encode("utf-16"), None),
    "empty.jsonl": (b"", 0),
    "whitespace_only.jsonl": (b" \n\n\t", 0),
}


@pytest.mark.parametrize("name", sorted(COUNTED_AS_OF_58AF404))
def test_a_manifest_counts_the_rows_it_counted_before(tmp_path: Path, name: str) -> None:
    from pipeline.progress_view import expected_samples
    from inputs.units import ReadUnit

    data, rows = COUNTED_AS_OF_58AF404[name]
    (tmp_path / name).write_bytes(data)
    assert expected_samples([ReadUnit("manifest", str(tmp_path), (str(tmp_path / name),))]) == rows


def test_counting_lines_in_chunks_splits_them_as_reading_the_whole_text_did() -> None:
    import io
    import random

    from pipeline.progress_view import count_lines, count_manifest_rows

    rng = random.Random(7)
    alphabet = ["a", "{}", " ", "\t", "\n", "\r", "\r\n", "\u2028", "\x85", "\x0c", "\x1c", "\u00e9", "\u3000"]
    for _ in range(400):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        size = rng.randint(1, 6)
        chunks = [text[i:i + size] for i in range(0, len(text), size)]
        assert count_lines(chunks) == sum(1 for line in text.splitlines() if line.strip()), repr(text)
    assert count_manifest_rows(io.StringIO(" \n" * 9 + '[{"a": 1},\n{"a": 2}, 3]'), json_file=True, chunk_chars=4) == 3
    assert count_manifest_rows(io.StringIO(" \n" * 9 + '{"a": 1}\n\n{"a": 2}'), json_file=True, chunk_chars=4) == 2


def test_a_large_jsonl_manifest_is_counted_in_chunks_never_read_whole(tmp_path: Path) -> None:
    import io
    import tracemalloc

    from pipeline.progress_view import COUNT_CHUNK_CHARS, count_manifest_rows, expected_samples
    from inputs.units import ReadUnit

    row = '{"url": "images/%09d.jpg", "caption": "a photo of thing number %09d"}\n'
    block = "".join(row % (i, i) for i in range(10_000)) + "\r\n\n"  # crlf and blank lines here and there

    class ReadInChunksOnly(io.StringIO):
        def read(self, size: int | None = -1) -> str:
            assert size is not None and 0 < size <= COUNT_CHUNK_CHARS, f"read({size})"
            return super().read(size)

    assert count_manifest_rows(ReadInChunksOnly(block * 5)) == 50_000
    manifest = tmp_path / "big.jsonl"
    with open(manifest, "w", encoding="utf-8", newline="") as f:
        for _ in range(60):  # 600,000 rows, ~44 MB
            f.write(block)
    tracemalloc.start()
    try:
        total = expected_samples([ReadUnit("manifest", str(tmp_path), (str(manifest),))])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 600_000
    assert peak < 16 * 2**20, peak  # the text is 44 MB; a chunk and its lines are a few MB


def test_the_launcher_reads_a_parquet_manifests_footer_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.input_plan import plan_input

    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"url": [f"{i}.jpg" for i in range(7)], "caption": ["x"] * 7}), manifest, row_group_size=3)
    opened: list[Any] = []
    real = pq.ParquetFile

    def counting(*args: Any, **kwargs: Any) -> Any:
        opened.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(pq, "ParquetFile", counting)
    assert plan_input(str(manifest)).size == 7  # checked (a damaged one stops the run) and counted ...
    assert len(opened) == 1  # ... from one read of its footer
