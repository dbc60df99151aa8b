"""--model-cache: a re-run reads model answers instead of paying for them again (stages/cache.py)."""
from __future__ import annotations

import json
import pathlib
import pickle

from conftest import run_pipeline, shard_hashes
from fake_openai_server import FakeOpenAIServer, completion
from stages.cache import ModelCache, cached_answers, digest


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


def test_entries_of_the_wrong_kind_are_misses_not_failures(tmp_path: pathlib.Path, scenes_dir: pathlib.Path) -> None:
    """Issue #16 (classes 6, 15): an entry that is a folder, a FIFO, not an object, or an answer of the wrong type
    is a miss; the sample is asked again and written, and an entry that cannot be rewritten is only logged."""
    import os

    from bad_inputs import FifoGuard

    cache = tmp_path / "cache"
    manifest = scenes_dir / "manifest.jsonl"
    first = run_pipeline(manifest, tmp_path / "a", "--model-cache", str(cache))
    entries = {stage: sorted((cache / stage).glob("*/*.json")) for stage in ("recaption", "detect")}
    assert len(entries["recaption"]) == len(entries["detect"]) == 12
    rec, det = entries["recaption"], entries["detect"]
    for path in (rec[0], det[0]):
        path.unlink()
        path.mkdir()  # a folder where the entry should be (cannot be rewritten either)
    rec[1].unlink()
    os.mkfifo(rec[1])
    bad = {rec[2]: [1, 2], rec[3]: "a string", rec[4]: None, rec[5]: {"answer": 5}, rec[6]: {"answer": ["x"]},
           det[1]: {"answer": "boxes"}, det[2]: {"answer": [[1, 2, 3]]}, det[3]: {"answer": [[[0, 0, 1], 0.9, 0]]},
           det[4]: {"answer": [[[0, 0, 10, 10], "high", 0]]}, det[5]: {"no answer": 1}}
    for path, value in bad.items():
        path.write_text(json.dumps(value))
    det[6].write_text("[" * 100_000)  # json nested past the recursion limit
    with FifoGuard(rec[1]):
        again = run_pipeline(manifest, tmp_path / "b", "--model-cache", str(cache))
    assert again["reconciled"] and again["written"] == first["written"] == 12 and again["dead_lettered"] == 0
    assert shard_hashes(tmp_path / "a") == shard_hashes(tmp_path / "b")
    assert again["counters"]["cache_hits:recaption"] == 12 - 7
    assert again["counters"]["cache_hits:detect"] == 12 - 7
    assert rec[0].is_dir()  # could not be rewritten: logged, the sample was still written
    assert isinstance(json.loads(rec[2].read_text())["answer"], str) and rec[1].is_file()  # rewritten whole
