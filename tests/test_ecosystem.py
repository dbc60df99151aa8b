"""Our shards in other people's loaders: sizes.json, webdataset brace patterns, Hugging Face datasets."""
from __future__ import annotations

import json
import pathlib

import pytest

from conftest import run_pipeline


@pytest.fixture(scope="module")
def out(scenes_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("eco") / "out"
    run_pipeline(scenes_dir / "manifest.jsonl", out, "--samples-per-shard", "4", "--runner", "FnApiRunner")
    return out


def test_sizes_json_counts_the_samples_of_every_shard(out: pathlib.Path) -> None:
    import tarfile

    sizes = json.loads((out / "sizes.json").read_text())
    assert sorted(sizes) == sorted(p.name for p in out.glob("shard-*.tar"))
    for name, n in sizes.items():
        with tarfile.open(out / name) as tar:
            assert n == len({m.name.split(".")[0] for m in tar.getmembers()}), name
    assert sum(sizes.values()) == json.loads((out / "summary.json").read_text())["written"] == 12


def test_webdataset_reads_a_brace_pattern(out: pathlib.Path) -> None:
    import webdataset as wds

    sizes = json.loads((out / "sizes.json").read_text())
    last = max(int(n[len("shard-"):-len(".tar")]) for n in sizes)
    url = f"{out}/shard-{{00000..{last:05d}}}.tar"
    samples = list(wds.WebDataset(url, shardshuffle=False, empty_check=False).decode("pil"))
    assert len(samples) == sum(sizes.values())
    assert all("jpg" in s or "png" in s or "webp" in s for s in samples) and all("bbox_info" in s["json"] for s in samples)


def test_hugging_face_datasets_loads_the_shards(out: pathlib.Path) -> None:
    import datasets  # the [hf] extra, installed by `make test`
    files = sorted(str(p) for p in out.glob("shard-*.tar"))
    ds = datasets.load_dataset("webdataset", data_files={"train": files}, split="train")
    assert ds.num_rows == 12 and isinstance(ds[0]["json"], dict) and "short_expr_negs" in str(ds[0]["json"])
