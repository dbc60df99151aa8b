"""``--runner dask`` on a real dask.distributed cluster (2 worker processes on 127.0.0.1).

The pipeline's shards must be byte-identical to the in-process FnApiRunner's; each bug of Beam
2.77's stock DaskRunner that pipeline/dask_runner.py fixes is pinned by a tiny pipeline that is
wrong on the stock runner and right on ours.
"""
from __future__ import annotations

import json
import pathlib
import uuid

import pytest

import dask.distributed  # noqa: E402,F401 - the [dask] extra, installed by `make test`

import apache_beam as beam  # noqa: E402
from apache_beam.metrics import Metrics  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from apache_beam.transforms.userstate import BagStateSpec  # noqa: E402

from conftest import read_shards, run_pipeline, shard_hashes  # noqa: E402

SAMPLE = pathlib.Path(__file__).resolve().parents[1] / "sample" / "manifest.jsonl"


@pytest.fixture(scope="module")
def cluster():
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", timeout=60) as c:
        yield c


def _run(runner_cls, address: str, build, *options: str):
    """Build a pipeline with ``build(p)`` and run it on the cluster; returns the result."""
    p = beam.Pipeline(runner=runner_cls(), options=PipelineOptions(["--dask_client_address", address, *options]))
    build(p)
    result = p.run()
    try:
        result.wait_until_finish()
    finally:
        result.client.close()
    return result


def _stock():
    from apache_beam.runners.dask.dask_runner import DaskRunner

    return DaskRunner


def _ours():
    from pipeline.dask_runner import FineHardDaskRunner

    return FineHardDaskRunner


def _write(value, root: str, name: str) -> None:
    pathlib.Path(root, f"{name}-{uuid.uuid4().hex}.json").write_text(json.dumps(value))


def _collected(root: pathlib.Path, name: str) -> list:
    return sorted(json.loads(p.read_text()) for p in root.glob(f"{name}-*.json"))


def _both(cluster, tmp_path: pathlib.Path, build, *options: str) -> tuple[list, list]:
    """What ``build(p, root)`` writes (through :func:`_write`) on the stock runner and on ours."""
    out = []
    for name, runner in (("stock", _stock()), ("ours", _ours())):
        root = tmp_path / name
        root.mkdir()
        _run(runner, cluster.scheduler_address, lambda p: build(p, str(root)), *options)
        out.append(_collected(root, "out"))
    return out[0], out[1]


# --- the pipeline ----------------------------------------------------------------------------------------

def test_pipeline_on_dask_writes_the_same_shards(cluster, tmp_path: pathlib.Path) -> None:
    ref = run_pipeline(SAMPLE, tmp_path / "ref", "--samples-per-shard", "8")
    summary = run_pipeline(SAMPLE, tmp_path / "dask", "--samples-per-shard", "8", "--runner", "dask",
                           "--dask_client_address", cluster.scheduler_address)
    assert summary["read"] == 29 and summary["written"] == 28 and summary["reconciled"]
    assert len(read_shards(tmp_path / "dask")) == 28
    assert shard_hashes(tmp_path / "dask") == shard_hashes(tmp_path / "ref")  # byte-identical
    assert summary["stage_metrics"]["recaption"]["samples"] == ref["stage_metrics"]["recaption"]["samples"] == 28


# --- each fixed bug of the stock runner --------------------------------------------------------------------

def test_finish_bundle_outputs_are_kept(cluster, tmp_path: pathlib.Path) -> None:
    """BatchElements (RunInference's batching) emits a bundle's last batch in finish_bundle."""
    def build(p, root):
        (p | beam.Create(list(range(10))) | beam.BatchElements(min_batch_size=4, max_batch_size=4)
         | beam.combiners.Count.Globally().without_defaults() | beam.Map(_write, root, "out"))
    stock, ours = _both(cluster, tmp_path, build)
    assert ours == [3]  # batches of 4, 4, 2
    assert stock == [2]  # the last batch, emitted in finish_bundle, is lost


def test_count_globally_over_several_bundles(tmp_path: pathlib.Path) -> None:
    """The stock runner shares one receiver list between the bundles of a step: on workers that run tasks
    in one process (threads; here an in-process cluster) a bundle returns the earlier bundles' outputs too."""
    from dask.distributed import LocalCluster

    def build(p, root):
        p | beam.Create(list(range(12))) | beam.combiners.Count.Globally() | beam.Map(_write, root, "out")
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address="127.0.0.1:0") as threads:
        root = tmp_path / "ours"
        root.mkdir()
        _run(_ours(), threads.scheduler_address, lambda p: build(p, str(root)), "--dask_npartitions", "4")
        assert _collected(root, "out") == [12]
        stock = tmp_path / "stock"
        stock.mkdir()
        with pytest.raises(AssertionError):  # Count's inject_default finds several partial counts
            _run(_stock(), threads.scheduler_address, lambda p: build(p, str(stock)), "--dask_npartitions", "4")


class _EvenOdd(beam.DoFn):
    def process(self, x):
        yield x if x % 2 == 0 else beam.pvalue.TaggedOutput("odd", x)


def test_multi_output_tags(cluster, tmp_path: pathlib.Path) -> None:
    def build(p, root):
        outs = p | beam.Create(list(range(6))) | beam.ParDo(_EvenOdd()).with_outputs("odd", main="even")
        even = outs.even | "E" >> beam.Map(lambda x: ["even", x])
        odd = outs.odd | "O" >> beam.Map(lambda x: ["odd", x])
        (even, odd) | beam.Flatten() | beam.Map(_write, root, "out")
    stock, ours = _both(cluster, tmp_path, build)
    assert ours == [["even", 0], ["even", 2], ["even", 4], ["odd", 1], ["odd", 3], ["odd", 5]]
    assert len(stock) == 12  # each consumer got all six outputs


class _Counted(beam.DoFn):
    def process(self, x):
        Metrics.counter("finehard_test", "seen").inc()
        yield x


def test_metrics(cluster) -> None:
    def build(p):
        p | beam.Create(list(range(7))) | beam.ParDo(_Counted())
    with pytest.raises(NotImplementedError):
        _run(_stock(), cluster.scheduler_address, build).metrics()
    counters = _run(_ours(), cluster.scheduler_address, build, "--dask_npartitions", "3").metrics().query()["counters"]
    assert [(c.key.metric.name, c.committed) for c in counters] == [("seen", 7)]


class _Stateful(beam.DoFn):
    SEEN = BagStateSpec("seen", beam.coders.VarIntCoder())

    def process(self, kv, seen=beam.DoFn.StateParam(SEEN)):
        seen.add(kv[1])
        yield kv


def test_stateful_dofns_are_refused_up_front(cluster) -> None:
    def build(p):
        p | beam.Create([("a", 1), ("a", 2)]) | beam.ParDo(_Stateful())
    with pytest.raises(Exception) as stock:
        _run(_stock(), cluster.scheduler_address, build)
    assert not isinstance(stock.value, NotImplementedError)  # an assertion deep in a worker
    with pytest.raises(NotImplementedError, match="stateful DoFns are not supported on --runner dask"):
        _run(_ours(), cluster.scheduler_address, build)


class _BundleId(beam.DoFn):
    def start_bundle(self):
        self.bundle = uuid.uuid4().hex

    def process(self, x):
        yield self.bundle


def test_reshuffle_spreads_over_the_workers(cluster, tmp_path: pathlib.Path) -> None:
    def build(p, root):
        (p | beam.Create(["unit"]) | beam.FlatMap(lambda u: range(8)) | beam.Reshuffle()
         | beam.ParDo(_BundleId()) | beam.Distinct() | beam.Map(_write, root, "out"))
    stock, ours = _both(cluster, tmp_path, build)
    assert len(stock) == 1 and len(ours) == 2  # one bundle per worker thread after the Reshuffle


def _side_effect(x, root: str):
    pathlib.Path(root, f"ran-{uuid.uuid4().hex}").touch()
    return x


def test_side_inputs_and_shared_steps_run_once(cluster, tmp_path: pathlib.Path) -> None:
    """A step read as a side input (the progress count) or by two consumers runs once per bundle, not per use."""
    runs = {}
    for name, runner in (("stock", _stock()), ("ours", _ours())):
        root = tmp_path / name
        root.mkdir()

        def build(p):
            nums = p | beam.Create(list(range(8)))
            side = p | "Side" >> beam.Create([1]) | "Effect" >> beam.Map(_side_effect, str(root))
            used = nums | beam.Map(lambda x, s: x + sum(s), s=beam.pvalue.AsList(side))
            (used | "A" >> beam.Map(lambda x: x), used | "B" >> beam.Map(lambda x: x)) | beam.Flatten()
        _run(runner, cluster.scheduler_address, build, "--dask_npartitions", "4")
        runs[name] = len(list(root.glob("ran-*")))
    assert runs["ours"] == 1
    assert runs["stock"] > 1


def test_every_sink_is_computed(cluster, tmp_path: pathlib.Path) -> None:
    def build(p, root):
        nums = p | beam.Create([1, 2])
        nums | "First" >> beam.Map(_write, root, "out")
        p | "Other" >> beam.Create([3]) | "Second" >> beam.Map(_write, root, "out")
    stock, ours = _both(cluster, tmp_path, build)
    assert ours == [1, 2, 3]
    assert stock != [1, 2, 3]  # only the last transform's branch ran


def test_without_an_address_a_local_cluster_is_started_and_closed(tmp_path: pathlib.Path) -> None:
    from pipeline.config import parse_config
    from pipeline.runners import make_runner

    config = parse_config(["--input", str(tmp_path), "--output", str(tmp_path / "o"), "--runner", "DaskRunner"])
    options = PipelineOptions(list(config.beam_args))
    p = beam.Pipeline(runner=make_runner(config), options=options)
    p | beam.Create([1, 2, 3]) | beam.Map(_write, str(tmp_path), "out")
    result = p.run()
    cluster = result.cluster
    assert len(cluster.workers) == 2 and cluster.scheduler_address.startswith("tcp://127.0.0.1:")
    assert result.wait_until_finish() == "DONE"
    assert _collected(tmp_path, "out") == [1, 2, 3]
    assert result.cluster is None and cluster.status.name == "closed" and result.client.status == "closed"


class _SetupCounted(beam.DoFn):
    def __init__(self, root: str):
        self.root = root

    def setup(self):
        pathlib.Path(self.root, f"setup-{uuid.uuid4().hex}").touch()

    def process(self, x):
        yield x


def test_dofns_are_set_up_once_per_worker_not_per_bundle(cluster, tmp_path: pathlib.Path) -> None:
    """A model stage's setup loads the model: the stock runner sets up (and tears down) per bundle."""
    setups = {}
    for name, runner in (("stock", _stock()), ("ours", _ours())):
        root = tmp_path / name
        root.mkdir()
        _run(runner, cluster.scheduler_address,
             lambda p: p | beam.Create(list(range(16))) | beam.ParDo(_SetupCounted(str(root))), "--dask_npartitions", "8")
        setups[name] = len(list(root.glob("setup-*")))
    assert setups["stock"] == 8
    assert 1 <= setups["ours"] <= 2  # 2 worker processes, 1 thread each


def _fails(x):
    raise ValueError(f"bad element {x}")


def test_a_failing_dofn_fails_the_run_with_its_error(cluster) -> None:
    with pytest.raises(ValueError, match="bad element"):
        _run(_ours(), cluster.scheduler_address, lambda p: p | beam.Create([1]) | beam.Map(_fails))


def test_impulse_feeds_its_consumers(cluster, tmp_path: pathlib.Path) -> None:
    def build(p, root):
        p | beam.Impulse() | beam.FlatMap(lambda _: [1, 2]) | beam.Map(_write, root, "out")
    root = tmp_path / "ours"
    root.mkdir()
    _run(_ours(), cluster.scheduler_address, lambda p: build(p, str(root)))
    assert _collected(root, "out") == [1, 2]
