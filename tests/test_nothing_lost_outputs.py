"""Nothing lost, round 3 (issue #24), the output side: the commands that read a run's output back
(stats, preview, the exports, train's shard reader) treat a shard from elsewhere as untrusted input;
shards are durable before their marker; locks, flags and printed text; retried bundles.
"""
from __future__ import annotations

import copy
import io
import json
import os
import pathlib
import pickle
import resource
import shutil
import socket
import subprocess
import sys
import tarfile

import pytest

from conftest import ROOT, read_shards, run_pipeline
from core.record import Field

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def run_out(tmp_path_factory: pytest.TempPathFactory, scenes_dir: pathlib.Path) -> pathlib.Path:
    out = tmp_path_factory.mktemp("round3") / "out"
    run_pipeline(scenes_dir / "manifest.jsonl", out, "--samples-per-shard", "4")
    return out


def copy_output(run_out: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
    shutil.copytree(run_out, dest)
    return dest


def add_tar(path: pathlib.Path, members: list[tuple[str, bytes]]) -> pathlib.Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def a_sample(run_out: pathlib.Path, with_negatives: bool = False) -> tuple[dict, bytes]:
    """The record and image of one real sample (one with a region that has 10 negatives if asked)."""
    for s in read_shards(run_out):
        rec = s["record"]
        if not with_negatives or any(r["flag_short_neg"] == 1 for r in rec["bbox_info"]):
            return rec, s["jpg"]
    raise AssertionError("no such sample")


def finehard(*argv: str, timeout: float = 120, limit_memory: bool = False) -> subprocess.CompletedProcess:
    """A real ``finehard`` process; ``limit_memory``: with 4 GiB of address space, so a command that reads
    /dev/zero whole fails instead of taking the machine's memory (torch's CUDA libraries need more)."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    return subprocess.run([sys.executable, "-m", "pipeline", *argv], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=timeout, preexec_fn=limit if limit_memory else None)


# --- shards from elsewhere: member names are never paths ---------------------------------------------

def hostile_output(run_out: pathlib.Path, tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A run's output plus a shard whose members name an absolute path and a path out of the folder."""
    out = copy_output(run_out, tmp_path / "out")
    rec, jpg = a_sample(run_out, with_negatives=True)
    target = tmp_path / "elsewhere" / "evil"
    evil = json.dumps({**rec, "key": "evil"}).encode()
    add_tar(out / "shard-00099.tar", [(f"{target}.json", evil), (f"{target}.jpg", jpg),
                                      ("../../escaped.json", evil), ("../../escaped.jpg", jpg)])
    return out, target


@pytest.mark.parametrize("command", ["export-fgclip", "export-fgovd"])
def test_an_export_never_writes_where_a_shards_member_names_point(run_out: pathlib.Path, tmp_path: pathlib.Path,
                                                                   command: str, capsys) -> None:
    from pipeline.cli import main

    out, target = hostile_output(run_out, tmp_path)
    dest = tmp_path / "export" / ("x" if command == "export-fgclip" else "x.jsonl")
    rc = main([command, str(out), "--to", str(dest)])
    err = capsys.readouterr().err
    assert not (tmp_path / "elsewhere").exists()  # the absolute member name wrote nothing there
    assert not list(tmp_path.rglob("escaped.*"))  # nor did the one with ".."
    assert rc == 1
    assert "absolute path" in err and "path traversal" in err
    written = list((tmp_path / "export").rglob("*.jpg"))
    assert written and all(p.stem != "evil" for p in written)  # the good samples are exported


def test_stats_preview_and_train_skip_unsafe_members_and_say_so(run_out: pathlib.Path, tmp_path: pathlib.Path,
                                                                 capsys) -> None:
    from pipeline.cli import main
    from training.data import iterate_examples

    out, _ = hostile_output(run_out, tmp_path)
    assert main(["stats", str(out)]) == 1
    err = capsys.readouterr().err
    assert "shard-00099.tar" in err and "absolute path" in err and "path traversal" in err
    assert main(["preview", str(out), "--out", str(tmp_path / "p.html"), "--n", "100"]) == 1
    assert "absolute path" in capsys.readouterr().err
    assert "evil" not in (tmp_path / "p.html").read_text()
    keys = [e["key"] for e in iterate_examples(str(out / "shard-00099.tar"), 32)]
    assert keys == []  # webdataset would have keyed them "/…/evil" and "../../escaped"


def test_one_rule_for_member_names() -> None:
    from core.files import member_name_problem
    from core.files import unsafe_member_problem as reader_rule
    from core.files import unsafe_member_problem

    assert reader_rule is unsafe_member_problem
    for name, problem in (("/abs/x.jpg", "absolute path"), ("a/../../x.jpg", "path traversal"),
                          ("C:x.jpg", "absolute path"), ("x\x00.jpg", "NUL in name"), ("sub/000001.jpg", None)):
        assert member_name_problem(name) == problem


# --- bad shard contents: one line each, never a traceback ---------------------------------------------

@pytest.fixture(scope="module")
def broken_output(run_out: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out = copy_output(run_out, tmp_path_factory.mktemp("broken") / "out")
    rec, jpg = a_sample(run_out, with_negatives=True)
    add_tar(out / "shard-00097.tar", [("notjson.json", b"{this is not json"), ("notjson.jpg", jpg),
                                      ("noimage.json", json.dumps({**rec, "key": "noimage"}).encode()),
                                      ("noimage.txt", b"caption"),
                                      ("badrec.json", json.dumps({**rec, "bbox_info": "nope"}).encode()),
                                      ("badrec.jpg", jpg)])
    (out / "shard-00098.tar").write_bytes(b"")  # a zero-byte tar
    return out


@pytest.mark.parametrize("command", ["stats", "preview", "export-fgclip", "export-fgovd"])
def test_a_broken_shard_is_skipped_with_one_line_each_not_a_traceback(broken_output: pathlib.Path,
                                                                       tmp_path: pathlib.Path, command: str) -> None:
    extra = {"stats": [], "preview": ["--out", str(tmp_path / "p.html"), "--n", "100"],
             "export-fgclip": ["--to", str(tmp_path / "e")], "export-fgovd": ["--to", str(tmp_path / "e.jsonl")]}
    done = finehard(command, str(broken_output), *extra[command])
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    err = done.stderr
    assert "shard-00097.tar: sample 'notjson': its .json is not JSON" in err
    assert "shard-00097.tar: sample 'noimage': has no image member" in err
    assert "shard-00097.tar: sample 'badrec': bbox_info is a str, not a list" in err
    assert "shard-00098.tar: not a readable tar" in err


# --- commands that re-open input paths apply the readers' rules -----------------------------------------

def test_preview_does_not_open_a_dead_lettered_fifo_or_device(run_out: pathlib.Path, tmp_path: pathlib.Path) -> None:
    out = copy_output(run_out, tmp_path / "out")
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.jpg"
    zero.symlink_to("/dev/zero")
    (out / "deadletter").mkdir(exist_ok=True)
    letters = [{"key": "fifo", "f_path": str(fifo), "stage": "read", "reason": "not_a_regular_file", "detail": ""},
               {"key": "zero", "f_path": str(zero), "stage": "read", "reason": "not_a_regular_file", "detail": ""}]
    (out / "deadletter" / "shard-00000.jsonl").write_text("".join(json.dumps(x) + "\n" for x in letters))
    os.mkfifo(out / "deadletter" / "shard-00001.jsonl")  # a list that is a FIFO is not waited on either
    done = finehard("preview", str(out), "--out", str(tmp_path / "p.html"), timeout=90, limit_memory=True)
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "p.html").read_text()
    assert 'data-key="fifo"' in page and 'data-key="zero"' in page and "(image not readable)" in page
    os.mkfifo(out / "read_counts" / "0000.json")  # nor a read count that is a FIFO
    done = finehard("stats", str(out), timeout=90)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == f"finehard stats: error: {out}/read_counts/0000.json is not a regular file"
    done = finehard("preview", str(out), "--out", str(tmp_path / "p.html"), timeout=90)
    assert done.returncode == 1 and "skipped read_counts:" in done.stderr and "Traceback" not in done.stderr


# --- durable shards --------------------------------------------------------------------------------------

def test_shard_data_and_lists_are_flushed_and_their_folder_synced_before_the_marker(tmp_path: pathlib.Path,
                                                                                   monkeypatch) -> None:
    from shards.write import write_shard

    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    out = tmp_path / "out"
    records = [{"key": "a", "f_path": "a.jpg", Field.IMAGE_BYTES: b"\xff\xd8a", "caption": "c"},
               {"key": "b", "f_path": "b.jpg", Field.DEAD: {"stage": "read", "reason": "unreadable", "detail": ""}},
               {"key": "c", "f_path": "c.jpg", Field.FILTERED: {"stage": "check", "reason": "too_small", "detail": ""}}]
    write_shard(str(out), 0, 1, records, {"config_hash": "x"})
    root = str(out)
    assert synced == [root + "/shard-00000.tar.inprogress", root,
                      root + f"/deadletter/shard-00000.jsonl.tmp-{os.getpid()}", root + "/deadletter",
                      root + f"/filtered/shard-00000.jsonl.tmp-{os.getpid()}", root + "/filtered",
                      root + f"/shard-00000_stats.json.tmp-{os.getpid()}", root]


# --- locks -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pid", [10 ** 30, 2 ** 40, -1, 0, "dead-as-string"])
def test_a_lock_whose_pid_cannot_be_running_is_taken_over(tmp_path: pathlib.Path, pid) -> None:
    from shards.outdir import LOCK_NAME, OutputLock

    if pid == "dead-as-string":
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        pid = str(dead.pid)
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "started": "x"}))
    with OutputLock(str(tmp_path)) as lock:
        assert lock.held
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_huge_or_malformed_lock_is_refused_clearly_and_read_only_in_part(tmp_path: pathlib.Path) -> None:
    from shards.outdir import LOCK_NAME, OutputInUse, OutputLock

    lock = tmp_path / LOCK_NAME
    with open(lock, "wb") as f:
        f.truncate(1 << 30)  # 1 GiB (sparse)
    probe = ("import resource, sys\nfrom shards.outdir import OutputLock, OutputInUse\n"
             "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
             "try:\n    OutputLock(sys.argv[1]).acquire()\nexcept OutputInUse as e:\n    print(e)\n"
             "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)")
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=120)
    said, grew_kib = done.stdout.strip().splitlines()
    assert f"{LOCK_NAME} that is not a valid lock: it is larger than 4096 bytes" in said
    assert int(grew_kib) < 64 << 10  # the 1 GiB file was not read
    lock.write_text('{"host": 3}')
    with pytest.raises(OutputInUse, match="it names no host and pid. If no run is using this folder, delete"):
        OutputLock(str(tmp_path)).acquire()
    assert lock.exists()  # never removed behind the user's back


def test_an_interrupt_while_the_lock_is_written_leaves_no_lock_behind(tmp_path: pathlib.Path, monkeypatch) -> None:
    import shards.outdir as outdir

    def interrupted(fd, *a, **k):
        os.close(fd)
        raise KeyboardInterrupt

    monkeypatch.setattr(outdir.os, "fdopen", interrupted)
    with pytest.raises(KeyboardInterrupt):
        outdir.OutputLock(str(tmp_path)).acquire()
    assert not (tmp_path / outdir.LOCK_NAME).exists()  # else the next run would be refused by an empty lock


# --- flags -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag, allowed", [
    (["--direct_num_workers", "-3"], "--direct_num_workers must be >= 0"),
    (["--num-shards", "-1"], "--num-shards must be >= 0"),
    (["--min-side", "-5"], "--min-side must be >= 0"),
    (["--near-dup-threshold", "1000"], "--near-dup-threshold must lie in -1..128"),
    (["--rows-per-read-unit", "-1"], "--rows-per-read-unit must be >= 0"),
    (["--runner", "NoSuchRunner"], "--runner NoSuchRunner is not a runner here; give one of DirectRunner"),
])
def test_a_bad_flag_value_exits_2_with_what_is_allowed_before_anything_is_written(
        scenes_dir: pathlib.Path, tmp_path: pathlib.Path, capsys, flag: list[str], allowed: str) -> None:
    from pipeline.cli import main

    out = tmp_path / "o"
    rc = main(["shards", "--input", str(scenes_dir / "manifest.jsonl"), "--output", str(out), *flag])
    err = capsys.readouterr().err
    assert rc == 2
    assert allowed in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


# --- printed text ------------------------------------------------------------------------------------------

def test_escape_sequences_from_the_input_never_reach_the_terminal_raw(tmp_path: pathlib.Path, capsys) -> None:
    from pipeline.cli import main

    evil = "\x1b]0;pwned\x07\x1b[2J\u202eFAKE"
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"url": f"nosuch://host/{evil}{i}.jpg", "key": f"k{i}"}) + "\n"
                                for i in range(3)))
    rc = main(["shards", "--input", str(manifest), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and "failed:" in err
    assert "\x1b" not in err and "\x07" not in err and "\u202e" not in err
    assert "\\x1b]0;pwned\\x07\\x1b[2J\\u202eFAKE" in err


def test_logs_and_pages_show_control_characters_written_out() -> None:
    import logging

    from pipeline.logs import configure
    from shards.preview import sample_card

    stream = io.StringIO()
    configure(0, stream)
    logging.getLogger("finehard").warning("key %s", "a\x1b[31mb")
    assert "a\\x1b[31mb" in stream.getvalue() and "\x1b" not in stream.getvalue()
    card = sample_card({"key": "k\x1b", "record": {"caption": "x\x1b]0;t\x07y\nz", "bbox_info": []}})
    assert "\x1b" not in card and "\x07" not in card and "x\\x1b]0;t\\x07y\nz" in card


# --- a model folder holding a pickle -------------------------------------------------------------------

class _Boom:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("command", ["eval", "convert"])
def test_a_model_folder_holding_a_pickle_is_refused_in_one_line_and_never_run(tmp_path: pathlib.Path,
                                                                              command: str) -> None:
    import torch

    model = tmp_path / "model"
    model.mkdir()
    marker = tmp_path / "ran"
    torch.save({"x": _Boom(str(marker))}, model / "pytorch_model.bin")
    argv = ["eval", "--model", str(model), "--fgovd", str(tmp_path / "x.jsonl")] if command == "eval" else ["convert", str(model), str(tmp_path / "dst")]
    done = finehard(*argv, timeout=240)
    assert not marker.exists()
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "pytorch_model.bin is not a plain weights file that can be loaded safely" in done.stderr


# --- cosmetic but misleading ---------------------------------------------------------------------------

def test_preview_refuses_to_write_over_a_shard_or_a_runs_file(run_out: pathlib.Path, tmp_path: pathlib.Path,
                                                            capsys) -> None:
    from pipeline.cli import main

    out = copy_output(run_out, tmp_path / "out")
    for victim in ("shard-00000.tar", "shard-00000_stats.json", "summary.json", "deadletter/x.html"):
        before = (out / victim).read_bytes() if (out / victim).exists() else None
        assert main(["preview", str(out), "--out", str(out / victim)]) == 2
        assert "is a file of the run in" in capsys.readouterr().err
        assert ((out / victim).read_bytes() if (out / victim).exists() else None) == before
    assert main(["export-fgovd", str(out), "--to", str(out / "shard-00001.tar")]) == 2
    assert main(["preview", str(out), "--out", str(out / "preview.html")]) == 0  # a page of its own is fine


def test_a_marker_that_over_counts_is_reported_as_such_not_as_lost_samples(scenes_dir: pathlib.Path,
                                                                           tmp_path: pathlib.Path, capsys) -> None:
    from pipeline.cli import main

    out = tmp_path / "o"
    argv = ["shards", "--input", str(scenes_dir / "manifest.jsonl"), "--output", str(out), "--samples-per-shard", "4"]
    assert main(argv) == 0
    marker = sorted(out.glob("shard-*_stats.json"))[0]
    stats = json.loads(marker.read_text())
    stats["written"] += 3
    marker.write_text(json.dumps(stats))
    capsys.readouterr()
    assert main(argv) == 1  # everything is complete: the summary is taken again from the markers
    err = capsys.readouterr().err
    assert "12 input items read, but the shards' stats markers account for 15: 3 more than were read" in err
    assert "lost" not in err
    assert main(["stats", str(out)]) == 0
    assert "3 more than were read" in capsys.readouterr().out


def test_exports_say_what_they_did_in_a_sentence_and_json_on_request(run_out: pathlib.Path, tmp_path: pathlib.Path,
                                                                     capsys) -> None:
    from pipeline.cli import main

    assert main(["export-fgclip", str(run_out), "--to", str(tmp_path / "a")]) == 0
    said = capsys.readouterr().out.strip()
    assert said.startswith("exported 12 image(s) with ") and "--data_path" in said and not said.startswith("{")
    assert main(["export-fgovd", str(run_out), "--to", str(tmp_path / "b.jsonl"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["to"] == str(tmp_path / "b.jsonl")


# --- retried bundles: every step that writes on the side leaves the state of one attempt ------------------

def snapshot(folder: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class FailedAttempt(Exception):
    """The first attempt of a bundle dies after its side effects (a worker lost, a later DoFn failing)."""


def _records(tmp_path: pathlib.Path, n: int = 5) -> list[dict]:
    from PIL import Image

    recs = []
    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (16 + i, 16), (40 * i, 0, 0)).save(buf, format="PNG")
        recs.append({"key": f"k{i}", "f_path": f"http://h/{i}.png", Field.IMAGE_BYTES: buf.getvalue(),
                     "caption": f"caption {i}", Field.EXT: "png"})
    return recs


def _read_counts(root: pathlib.Path, retried: bool) -> None:
    from inputs.reader import read_and_count
    from inputs.units import ReadUnit

    images = root.parent.parent / "images"  # the same input for both runs
    images.mkdir(exist_ok=True)
    for rec in _records(root):
        (images / f"{rec['key']}.png").write_bytes(rec[Field.IMAGE_BYTES])
    unit = ReadUnit("files", str(images), tuple(str(p) for p in sorted(images.glob("*.png"))))
    if retried:
        with pytest.raises(FailedAttempt):
            for _ in read_and_count(unit, counts_root=str(root)):
                pass
            raise FailedAttempt  # the count is written: the bundle dies before it commits
    list(read_and_count(unit, counts_root=str(root)))


def _progress(root: pathlib.Path, retried: bool) -> None:
    from transforms.progress import LogProgress

    recs = _records(root)
    ticks = iter(range(1000))

    def make() -> LogProgress:
        fn = LogProgress(stage="recaption", progress_dir=str(root), clock=lambda: float(next(ticks)))
        fn.setup()
        return fn

    _bundle_twice(make, recs, fail_after=2, retried=retried)  # at 2 its count was flushed (a tick > FLUSH_EVERY_S)


def _bundle_twice(make_fn, elements: list, fail_after: int, retried: bool) -> None:
    """One bundle of the DoFn ``make_fn()`` gives over ``elements``; with ``retried`` a first attempt
    fails after element ``fail_after`` (its side effects done), as a runner's retried bundle."""
    def attempt(fail: bool) -> None:
        fn = make_fn()
        fn.start_bundle()
        for i, element in enumerate(elements):
            list(fn.process(element))
            if fail and i == fail_after:
                raise FailedAttempt
        fn.finish_bundle()

    if retried:
        with pytest.raises(FailedAttempt):
            attempt(fail=True)
    attempt(fail=False)


def _spill(root: pathlib.Path, retried: bool) -> None:
    from core.spill import spill_image

    recs = _records(root)
    if retried:
        for rec in copy.deepcopy(recs)[:3]:
            spill_image(rec, str(root))
    for rec in copy.deepcopy(recs):
        spill_image(rec, str(root))


def _model_cache(root: pathlib.Path, retried: bool) -> None:
    from stages.cache import ModelCache, cached_answers, digest

    prov = {"engine": "e", "model": "m"}
    digests = [digest(f"img{i}") for i in range(4)]

    def ask(idx: list[int]) -> list[str]:
        return [f"answer {i}" for i in idx]

    cache = ModelCache(str(root))
    if retried:
        with pytest.raises(FailedAttempt):
            cached_answers(cache, "recaption", prov, 4, digests.__getitem__, ask, keep=bool)
            raise FailedAttempt
    cached_answers(pickle.loads(pickle.dumps(cache)), "recaption", prov, 4, digests.__getitem__, ask, keep=bool)


def _hash_rows(root: pathlib.Path, retried: bool) -> None:
    import pipeline.waves as waves

    lines = [json.dumps([f"k{i}", f"{i:064x}", i, None, [0, i, ""]]) for i in range(5)]  # key, sha, dHash, thumb, input order
    saved = waves.ROWS_PER_FILE
    waves.ROWS_PER_FILE = 2
    try:
        _bundle_twice(lambda: waves.WriteHashRows(str(root)), lines, fail_after=3, retried=retried)  # 2 files written
    finally:
        waves.ROWS_PER_FILE = saved
    assert len(list(waves.read_hash_rows(str(root)))) == 5


def _shards(root: pathlib.Path, retried: bool) -> None:
    import shards.write as write

    recs = _records(root)
    recs[3][Field.DEAD] = {"stage": "read", "reason": "unreadable", "detail": "x"}
    recs[4][Field.FILTERED] = {"stage": "dedup", "reason": "duplicate", "detail": "k0"}
    if retried:
        real = write.atomic_write

        def dies_at_the_marker(fs, path, data, tmp=None, durable=False):
            if path.endswith(write.STATS_SUFFIX):
                raise FailedAttempt
            return real(fs, path, data, tmp, durable)

        write.atomic_write = dies_at_the_marker
        try:
            with pytest.raises(FailedAttempt):
                write.write_shard(str(root), 0, 1, copy.deepcopy(recs), {"config_hash": "x"})
        finally:
            write.atomic_write = real
        assert (root / "shard-00000.tar").exists()
    write.write_shard(str(root), 0, 1, copy.deepcopy(recs), {"config_hash": "x"})


@pytest.mark.parametrize("step", [_read_counts, _progress, _spill, _model_cache, _hash_rows, _shards],
                         ids=lambda f: f.__name__.strip("_"))
def test_a_retried_bundle_leaves_the_files_of_one_attempt(tmp_path: pathlib.Path, step) -> None:
    once, twice = tmp_path / "once" / "root", tmp_path / "twice" / "root"
    once.mkdir(parents=True)
    twice.mkdir(parents=True)
    step(once, retried=False)
    step(twice, retried=True)
    assert snapshot(once) and snapshot(twice) == snapshot(once)
