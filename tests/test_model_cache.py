"""--model-cache: a re-run reads model answers instead of paying for them again (transforms/cache.py)."""
from __future__ import annotations

import json
import pathlib
import pickle

from conftest import run_pipeline, shard_hashes
from fake_openai_server import FakeOpenAIServer, completion
from transforms.cache import ModelCache, cached_answers, digest


def test_a_rerun_with_the_cache_asks_the_captioning_server_nothing(scenes_dir: pathlib.Path,
                                                                   tmp_path: pathlib.Path) -> None:
    cache = str(tmp_path / "cache")
    manifest = scenes_dir / "manifest.jsonl"
    with FakeOpenAIServer(lambda req: (200, completion("A red circle above a blue square."))) as server:
        spec = f"openai:{server.url}?timeout=10#cogvlm2"
        first = run_pipeline(manifest, tmp_path / "a", "--captioner", spec, "--model-cache", cache)
        assert len(server.requests) == 12 and "cache_hits:recaption" not in first["counters"]
        second = run_pipeline(manifest, tmp_path / "b", "--captioner", spec, "--model-cache", cache)
        assert len(server.requests) == 12  # nothing asked again
        assert second["counters"]["cache_hits:recaption"] == 12
        assert shard_hashes(tmp_path / "a") == shard_hashes(tmp_path / "b")
        # Another engine option changes what the model sees: those answers are not reused.
        run_pipeline(manifest, tmp_path / "c", "--captioner", spec, "--model-cache", cache,
                     "--caption-max-side", "256")
        assert len(server.requests) == 24


def test_raw_boxes_are_cached_so_new_thresholds_still_hit(scenes_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    cache = str(tmp_path / "cache")
    manifest = scenes_dir / "manifest.jsonl"
    first = run_pipeline(manifest, tmp_path / "a", "--model-cache", cache, "--negatives", "rules")
    again = run_pipeline(manifest, tmp_path / "b", "--model-cache", cache, "--negatives", "rules")
    assert shard_hashes(tmp_path / "a") == shard_hashes(tmp_path / "b")
    regions = first["counters"]["regions"]
    assert again["counters"]["cache_hits:detect"] == again["written"] == 12
    assert again["counters"]["cache_hits:negatives"] == regions > 0
    stricter = run_pipeline(manifest, tmp_path / "c", "--model-cache", cache, "--box-conf", "0.99")
    assert stricter["counters"]["cache_hits:detect"] == 12  # same raw detections, other selection
    assert stricter["counters"].get("regions", 0) < regions


def test_bad_entries_are_misses_and_the_cache_pickles_as_its_root(tmp_path: pathlib.Path) -> None:
    cache = ModelCache(str(tmp_path))
    prov = {"engine": "x", "model": "m", "run": "r1"}
    assert cache.key("s", prov, "d") == cache.key("s", {**prov, "run": "r2"}, "d")  # the run id is not part
    assert cache.key("s", prov, "d") != cache.key("s", {**prov, "model": "m2"}, "d")
    asked: list[list[int]] = []

    def ask(idx: list[int]) -> list[str]:
        asked.append(idx)
        return [f"answer {i}" for i in idx]

    digests = [digest(b"img0"), digest(b"img1")]
    answers, hits = cached_answers(cache, "s", prov, 2, digests.__getitem__, ask, keep=bool)
    assert answers == ["answer 0", "answer 1"] and hits == [False, False]
    pathlib.Path(cache.path("s", cache.key("s", prov, digests[1]))).write_text("{not json")
    answers, hits = cached_answers(pickle.loads(pickle.dumps(cache)), "s", prov, 2, digests.__getitem__, ask,
                                   keep=bool)
    assert answers == ["answer 0", "answer 1"] and hits == [True, False] and asked == [[0, 1], [1]]
    entry = json.loads(pathlib.Path(cache.path("s", cache.key("s", prov, digests[1]))).read_text())
    assert entry == {"answer": "answer 1"}  # rewritten whole
    assert digest("ab", "c") != digest("a", "bc")
