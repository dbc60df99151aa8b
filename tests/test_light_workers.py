"""Workers start light (no torch where no stage needs it) and shard tars are the bytes webdataset writes."""
from __future__ import annotations

import io
import json
import pathlib
import subprocess
import sys

import webdataset as wds

from conftest import ROOT
from shards.write import TAR_MTIME, ShardTarWriter


def test_the_shard_writer_writes_the_bytes_webdatasets_tarwriter_writes() -> None:
    samples = [("a_key", {"jpg": b"\xff\xd8 image", "json": b'{"caption": "x"}', "txt": b"x"}),
               ("b-key_2", {"png": b"\x89PNG data" * 100, "json": b"{}", "txt": "é ünïcode".encode()})]
    ours, theirs = io.BytesIO(), io.BytesIO()
    with ShardTarWriter(ours) as tw:
        for key, members in samples:
            tw.write(key, members)
    with wds.TarWriter(theirs, user="finehard", group="finehard", mode=0o444, mtime=TAR_MTIME, encoder=False) as tw:
        for key, members in samples:
            tw.write({"__key__": key, **members})
    assert ours.getvalue() == theirs.getvalue()
    back = list(wds.WebDataset([_as_file(ours.getvalue())], shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in back] == ["a_key", "b-key_2"] and back[1]["png"] == samples[1][1]["png"]


def _as_file(data: bytes) -> str:
    import tempfile

    f = tempfile.NamedTemporaryFile(suffix=".tar", delete=False)
    f.write(data)
    f.close()
    return f.name


def _fresh_process_json(code: str) -> dict:
    """The JSON line ``code`` prints last, run in a fresh interpreter (what a new worker imports)."""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_run_whose_stages_need_no_torch_never_imports_it(scenes_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    # Every stage with stub engines, spaCy real and rules negatives (inflect on every region): spaCy's
    # thinc would import torch if let, and inflect would be instrumented by typeguard on import.
    code = ("import sys, json; from pipeline.config import parse_config; from pipeline.run import run; "
            f"s = run(parse_config(['--input', {str(scenes_dir / 'manifest.jsonl')!r}, "
            f"'--output', {str(tmp_path / 'o')!r}, '--negatives', 'rules'])); "
            "import inflect, typeguard, typeguard._decorators as d; "
            "names = inflect.engine.plural_noun.__code__.co_names; "
            "print(json.dumps({'written': s['written'], 'torch': 'torch' in sys.modules, "
            "'spacy': 'spacy' in sys.modules, 'inflect_checked': any('typeguard' in n for n in names), "
            "'typechecked_restored': typeguard.typechecked is d.typechecked}))")
    assert _fresh_process_json(code) == {
        "written": 12, "torch": False, "spacy": True, "inflect_checked": False, "typechecked_restored": True}


def test_spacy_loaded_without_torch_leaves_torch_importable_and_parses_the_same() -> None:
    code = ("import sys, json; from stages.expressions import extract_expressions; "
            "a = extract_expressions(['A man in a blue shirt rides a brown horse.']); t = 'torch' in sys.modules; "
            "import torch, thinc.compat; print(json.dumps({'torch_before': t, 'torch_after': torch.tensor([2]).item(), "
            "'thinc_torch': thinc.compat.has_torch, 'exprs': [e['long_expr'] for e in a[0]]}))")
    assert _fresh_process_json(code) == {
        "torch_before": False, "torch_after": 2, "thinc_torch": False,
        "exprs": ["a man in a blue shirt", "a blue shirt", "a brown horse"]}


def test_each_image_is_fully_decoded_once_in_a_whole_run(scenes_dir: pathlib.Path, tmp_path: pathlib.Path,
                                                         monkeypatch) -> None:
    from PIL import ImageFile

    from conftest import run_pipeline

    decodes: list[str] = []
    real_load = ImageFile.ImageFile.load

    def counting_load(self):  # noqa: ANN001 - PIL's own signature
        if getattr(self, "_im", None) is None:  # pixels not decoded yet: this call decodes them
            decodes.append(self.format)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    summary = run_pipeline(scenes_dir / "manifest.jsonl", tmp_path / "o")  # dedup (near) on, all stages, stubs
    assert summary["written"] == 12
    assert decodes == ["JPEG"] * 12  # the check's decode; dedup hashes and stub engines reuse it or need none
