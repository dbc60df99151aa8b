"""Shared fixtures: small synthetic inputs and a helper that runs the real pipeline."""
from __future__ import annotations

import dis
import hashlib
import json
import multiprocessing.process
import os
import pathlib
import subprocess
import sys
import types

import pytest

# No test may reach a hub: everything offline, ultralytics config in a writable place.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", "/tmp/finehard-yolo-config")

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: takes a minute or more on 2 cores (pip's resolver, whole runs in subprocesses, real "
                   "models); `make test` and CI run it, `make test-quick` (pytest -m 'not slow') leaves it out. "
                   "tests/conftest.py adds it to every test that runs the whole pipeline or launches a process")


# --- The slow marker, found rather than written by hand -------------------------------------------------
# A test is slow when it (or a fixture it uses, or a helper of the tests/ folder that it calls, followed
# down) runs the whole pipeline (conftest's run_pipeline, pipeline.run.run, in-process or through the
# CLI in a subprocess) or launches any process (the subprocess module); tests that load a real model
# are marked in their files. The guard below fails any test left unmarked that runs the pipeline or
# starts a process anyway, so nothing slow hides in `pytest -m "not slow"`.
TESTS_DIR = pathlib.Path(__file__).resolve().parent
CLI_MODULE, CLI_ENTRY = "pipeline.cli", "main"  # main(["shards", ...]) runs the pipeline too
HELPER_DIRS = (TESTS_DIR, TESTS_DIR.parent / "bench")  # helpers followed into: the tests' and the benches'
# Slow for a reason no name in the test tells (a library starts a process, a real model is built):
# a file name (every test in it) or a node id's end -> the reason.
SLOW_INSIDE = {
    "test_dask_runner.py": "launches a process (dask's LocalCluster starts worker processes)",
    "test_detect_yolo_world.py": "loads a real model (YOLO-World built from its yaml, a CLIP text encoder)",
    "test_runners.py::test_pipeline_translates_to_the_portable_proto[flink]": "launches a process (Beam's Flink "
                                                                           "translation)",
    "test_training_data.py::test_loader_with_worker_processes": "launches a process (torch's DataLoader workers)",
    "test_training_data.py::test_pipe_urls_are_opened": "launches a process (webdataset's pipe: URLs)",
    "test_training_data.py::test_sample_count_from_pipeline_stats_or_tar_headers": "launches a process "
                                                                                  "(webdataset's pipe: URLs)",
}
PROCESS_MODULES = ("subprocess", "multiprocessing")
SLOW_BECAUSE = {"pipeline": "runs the whole pipeline", "process": "launches a process"}


def _in_tests(obj: object) -> bool:
    code = getattr(obj, "__code__", None)
    return code is not None and pathlib.Path(code.co_filename).resolve().parent in HELPER_DIRS


def _codes(code: types.CodeType):
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _codes(const)


def slow_reason(func: object, seen: set | None = None) -> str | None:
    """Why ``func`` is slow ("pipeline" or "process"), reading its bytecode and following the functions and
    classes of tests/ it names; None when nothing it reaches runs the pipeline or starts a process."""
    seen = set() if seen is None else seen
    func = getattr(func, "__func__", func)
    if id(func) in seen or not hasattr(func, "__code__"):
        return None
    seen.add(id(func))
    for code in _codes(func.__code__):
        imported = None
        for ins in dis.get_instructions(code):
            why = None
            if ins.opname == "IMPORT_NAME":
                imported = ins.argval
                if _names_a_process_module(imported):
                    return "process"
            elif ins.opname == "IMPORT_FROM" and imported == PIPELINE_MODULE and ins.argval == PIPELINE_ENTRY:
                return "pipeline"
            elif ins.opname == "IMPORT_FROM" and (imported, ins.argval) == (CLI_MODULE, CLI_ENTRY):
                why = "pipeline" if _says_shards(func.__code__) else None
            elif ins.opname == "IMPORT_FROM":  # from conftest import run_pipeline, inside the test
                why = _slow_reason_of(getattr(sys.modules.get(imported or ""), ins.argval, None), seen)
            elif ins.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
                obj = func.__globals__.get(ins.argval)
                cli = getattr(sys.modules.get(CLI_MODULE), CLI_ENTRY, None)
                if obj is not None and obj is cli:
                    why = "pipeline" if _says_shards(func.__code__) else None
                else:
                    why = _slow_reason_of(obj, seen)
            if why:
                return why
    return None


def _is_the_detection(func: object) -> bool:
    """This file's marking code: it names the pipeline's entry and the process modules without calling them."""
    code = getattr(getattr(func, "__func__", func), "__code__", None)
    return code is not None and code.co_filename == __file__ and code.co_name in (
        "slow_reason", "_slow_reason_of", "_slow_reason_of_item", "pytest_collection_modifyitems", "_says_shards",
        "_names_a_process_module", "_is_the_detection", "_slow_tests_are_marked")


def _names_a_process_module(name: str) -> bool:
    """subprocess, multiprocessing and the modules named after them (torch.multiprocessing ...)."""
    return any(part in PROCESS_MODULES for part in name.split("."))


def _says_shards(code: types.CodeType) -> bool:
    """Whether the code names the CLI's ``shards`` command (the one of its commands that runs the pipeline)."""
    return any(k == "shards" or (isinstance(k, tuple) and "shards" in k) for c in _codes(code) for k in c.co_consts)


def _slow_reason_of(obj: object, seen: set) -> str | None:
    """Why a name a test uses is slow: the pipeline's entry, the process modules, or a slow helper of tests/."""
    entry = getattr(sys.modules.get(PIPELINE_MODULE), PIPELINE_ENTRY, None)
    if obj is None:
        return None
    if obj is run_pipeline or (entry is not None and obj is entry):
        return "pipeline"
    if isinstance(obj, types.ModuleType) and _names_a_process_module(obj.__name__):
        return "process"
    if _names_a_process_module(getattr(obj, "__module__", None) or ""):  # subprocess.run, mp.spawn ...
        return "process"
    members = vars(obj).values() if isinstance(obj, type) and _in_tests_class(obj) else [obj]
    for member in members:
        if _in_tests(getattr(member, "__func__", member)) and not _is_the_detection(member):
            why = slow_reason(member, seen)
            if why:
                return why
    return None


def _in_tests_class(cls: type) -> bool:
    module = sys.modules.get(cls.__module__)
    return module is not None and pathlib.Path(getattr(module, "__file__", "") or "").resolve().parent in HELPER_DIRS


def _slow_reason_of_item(item: pytest.Item) -> str | None:
    funcs = [getattr(item, "function", None)]
    info = getattr(item, "_fixtureinfo", None)
    for defs in (info.name2fixturedefs.values() if info else ()):
        funcs += [d.func for d in defs if _in_tests(getattr(d.func, "__wrapped__", d.func))
                  and d.argname != "_slow_tests_are_marked"]
    for f in funcs:
        why = slow_reason(getattr(f, "__wrapped__", f)) if f is not None else None
        if why:
            return why
    return None


def _entry_of_run_pipeline() -> tuple[str, str]:
    """(module, name) that run_pipeline imports: the one place that names the pipeline's entry, so a move of
    the entry (rewritten there by tools/move_symbols.py) moves the detection and the guard with it."""
    module = None
    for ins in dis.get_instructions(run_pipeline):
        if ins.opname == "IMPORT_NAME":
            module = ins.argval
        elif ins.opname == "IMPORT_FROM" and module:
            return module, ins.argval
    raise RuntimeError("run_pipeline no longer imports the pipeline's entry: tests/conftest.py's detection needs it")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("slow") is None:
            inside = next((r for key, r in SLOW_INSIDE.items()
                           if (item.nodeid.endswith(key) if "::" in key else item.nodeid.split("::")[0].endswith(key))),
                          None)
            why = _slow_reason_of_item(item)
            if inside:
                item.add_marker(pytest.mark.slow(reason=inside))
            elif why:
                item.add_marker(pytest.mark.slow(reason=SLOW_BECAUSE[why]))


class UnmarkedSlowTest(AssertionError):
    """A test not marked slow ran the whole pipeline or started a process."""


@pytest.fixture(autouse=True)
def _slow_tests_are_marked(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """Fails a test that is not marked slow when it runs the whole pipeline or starts a process: the marker
    detection above missed it; mark it ``@pytest.mark.slow`` (or teach the detection its helper)."""
    if request.node.get_closest_marker("slow") is not None:
        yield
        return

    def refuse(what: str):
        def refused(*args, **kwargs):
            raise UnmarkedSlowTest(f"{request.node.nodeid} {what} but is not marked slow: add @pytest.mark.slow "
                                   "(tests/conftest.py marks tests that call run_pipeline or subprocess)")
        return refused

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse("starts a process"))
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse("starts a process"))
    import importlib

    monkeypatch.setattr(importlib.import_module(PIPELINE_MODULE), PIPELINE_ENTRY, refuse("runs the whole pipeline"))
    yield


@pytest.fixture(scope="session")
def scenes_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """12 synthetic scenes plus a jsonl manifest, shared read-only by tests."""
    from core.synthetic import write_scenes

    d = tmp_path_factory.mktemp("scenes")
    write_scenes(str(d), 12, seed=3)
    return d


def run_pipeline(input_uri: str, output: pathlib.Path | str, *extra: str) -> dict:
    from pipeline.run import run  # first: _entry_of_run_pipeline reads the pipeline's entry from this line
    from pipeline.config import parse_config

    return run(parse_config(["--input", str(input_uri), "--output", str(output), *extra]))


PIPELINE_MODULE, PIPELINE_ENTRY = _entry_of_run_pipeline()  # pipeline.run, run: what `finehard shards` runs


def shard_hashes(output: pathlib.Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(output.glob("*.tar"))}


def read_shards(output: pathlib.Path) -> list[dict]:
    """Every sample of every shard, through the real webdataset reader."""
    import webdataset as wds

    urls = [str(p) for p in sorted(output.glob("*.tar"))]
    samples = []
    for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        s = dict(s)
        s["record"] = json.loads(s["json"])
        samples.append(s)
    return samples


def dead_letters(output: pathlib.Path) -> list[dict]:
    out = []
    for p in sorted((output / "deadletter").glob("*.jsonl")):
        out += [json.loads(line) for line in p.read_text().splitlines()]
    return out
