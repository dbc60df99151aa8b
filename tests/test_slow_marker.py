"""The slow marker: tests/conftest.py finds the tests that run the whole pipeline or start a process and marks
them slow, and fails any unmarked test that does either anyway, so `pytest -m "not slow"` stays quick."""
from __future__ import annotations

import importlib
import pathlib
import sys

import pytest

from conftest import UnmarkedSlowTest, run_pipeline, slow_reason


def _runs_the_pipeline(out: pathlib.Path) -> dict:
    return run_pipeline("sample", out)


def _calls_a_helper_that_runs_the_pipeline(out: pathlib.Path) -> dict:
    return _runs_the_pipeline(out)


def _imports_the_helper_inside(out: pathlib.Path) -> dict:
    from conftest import run_pipeline as again

    return again("sample", out)


def _imports_the_entry_inside() -> None:
    from pipeline.run import run

    run([])


def _starts_a_process() -> None:
    import subprocess

    subprocess.run([sys.executable, "-c", "pass"], check=True)


def _reads_a_file(p: pathlib.Path) -> str:
    return p.read_text()


class _Helper:
    def go(self, out: pathlib.Path) -> dict:
        return _runs_the_pipeline(out)


def _uses_a_class_of_tests(out: pathlib.Path) -> dict:
    return _Helper().go(out)


# Looked up by name, so that the collection (which follows the functions a test names) does not mark the
# tests below slow: they only read the helpers' code, never call them.
HELPERS = {f.__name__: f for f in (_runs_the_pipeline, _calls_a_helper_that_runs_the_pipeline, _imports_the_helper_inside,
                                   _imports_the_entry_inside, _uses_a_class_of_tests, _starts_a_process, _reads_a_file)}


def test_a_test_reaching_the_pipeline_or_a_process_through_helpers_is_found_slow() -> None:
    assert slow_reason(HELPERS["_runs_the_pipeline"]) == "pipeline"
    assert slow_reason(HELPERS["_calls_a_helper_that_runs_the_pipeline"]) == "pipeline"
    assert slow_reason(HELPERS["_imports_the_helper_inside"]) == "pipeline"
    assert slow_reason(HELPERS["_imports_the_entry_inside"]) == "pipeline"
    assert slow_reason(HELPERS["_uses_a_class_of_tests"]) == "pipeline"
    assert slow_reason(HELPERS["_starts_a_process"]) == "process"
    assert slow_reason(HELPERS["_reads_a_file"]) is None


class _FakeItem:
    """Test double of a collected pytest item: a test function, its fixtures, its markers."""

    def __init__(self, function) -> None:
        self.function, self.markers, self._fixtureinfo = function, [], None
        self.nodeid = f"tests/test_slow_marker.py::{function.__name__}"

    def get_closest_marker(self, name: str):
        return next((m for m in self.markers if m.name == name), None)

    def add_marker(self, marker) -> None:
        self.markers.append(getattr(marker, "mark", marker))


def test_collection_marks_the_tests_that_run_the_pipeline_slow_and_leaves_the_others(
        pytestconfig: pytest.Config) -> None:
    from conftest import pytest_collection_modifyitems

    items = [_FakeItem(HELPERS[name]) for name in ("_calls_a_helper_that_runs_the_pipeline", "_starts_a_process",
                                                   "_reads_a_file")]
    pytest_collection_modifyitems(pytestconfig, items)
    marks = [i.get_closest_marker("slow") for i in items]
    assert marks[0].kwargs["reason"] == "runs the whole pipeline"
    assert marks[1].kwargs["reason"] == "launches a process"
    assert marks[2] is None


def test_an_unmarked_test_that_runs_the_whole_pipeline_fails(tmp_path: pathlib.Path) -> None:
    # Reached in a way the collection cannot see: the guard must stop it before the run starts.
    entry = getattr(importlib.import_module("pipeline." + "run"), "r" + "un")
    with pytest.raises(UnmarkedSlowTest, match="runs the whole pipeline but is not marked slow"):
        entry(["--input", "sample", "--output", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_an_unmarked_test_that_starts_a_process_fails() -> None:
    popen = getattr(importlib.import_module("sub" + "process"), "Popen")
    with pytest.raises(UnmarkedSlowTest, match="starts a process but is not marked slow"):
        popen([sys.executable, "-c", "pass"])


def test_an_unmarked_test_that_starts_a_multiprocessing_process_fails() -> None:
    process = getattr(importlib.import_module("multi" + "processing"), "Process")(target=print)
    with pytest.raises(UnmarkedSlowTest, match="starts a process but is not marked slow"):
        process.start()
