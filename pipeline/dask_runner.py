"""Beam's DaskRunner (2.77), fixed for this pipeline: ``--runner dask`` (experimental).

The stock runner (``apache_beam.runners.dask``) translates a pipeline into ``dask.bag``
operations; as shipped it is wrong for this pipeline in ways ``tests/test_dask_runner.py`` pins:

1. outputs are collected before ``finish_bundle``: the last batch of every bundle that a
   ``BatchElements``/``RunInference`` step emits there is lost;
2. one receiver list is shared by every bundle of a step: ``Count.Globally`` over-counts;
3. a multi-output ParDo's consumers each receive every output, untagged;
4. metrics raise ``NotImplementedError``;
5. a stateful DoFn fails on an assertion in a worker;
6. ``Reshuffle`` is a no-op (nothing is spread over the workers);
7. a side input is recomputed, inside a worker, by every bundle that reads it;
8. only the last transform's result is computed: a second sink is silently skipped.

:class:`FineHardDaskRunner` keeps the stock translation of Create and Flatten (GroupByKey: the
same grouping, its shuffle pinned to dask's task shuffle, which is right across machines) and
replaces the rest: bags are tracked per PCollection (so tags select outputs), each bundle gets
its own receivers and a metrics container (DoFns are set up once per worker thread and reused,
as on Beam's other runners), outputs are taken after
``finish_bundle``, side inputs are one graph node each, ``Reshuffle`` repartitions over the
cluster's threads, every sink and every step's metrics are computed in one graph. Stateful DoFns
are refused when the graph is built. Without ``--dask_client_address`` it starts a
``LocalCluster`` (2 worker processes, 1 thread each, on 127.0.0.1) and closes it at the end.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import threading
import typing as t
import uuid

import dask
import dask.bag as db
import dask.distributed as ddist
from apache_beam import DoFn, Impulse
from apache_beam import ParDo as BeamParDo
from apache_beam.internal import pickler
from apache_beam.metrics.execution import MetricsContainer
from apache_beam.pipeline import PipelineVisitor
from apache_beam.runners.common import DoFnContext, DoFnInvoker, DoFnSignature, Receiver, _OutputHandler
from apache_beam.runners.dask.dask_runner import DaskOptions, DaskRunner, DaskRunnerResult  # registers DaskOptions
from apache_beam.runners.dask.overrides import _Create, _Flatten, _GroupByKeyOnly, _Reshuffle, dask_overrides
from apache_beam.runners.dask.transform_evaluator import Create, defenestrate, get_windowed_value
from apache_beam.runners.direct.direct_metrics import DirectMetrics
from apache_beam.runners.runner import PipelineState
from apache_beam.runners.worker import statesampler
from apache_beam.transforms.sideinputs import SideInputMap
from apache_beam.utils import counters

LOG = logging.getLogger("finehard")
METRICS_TAG = "__finehard_dask_metrics__"  # a bundle's metric updates travel in its output, under this tag
LOCAL_WORKERS = 2


class _Receivers(dict):
    """One bundle's receivers: every output, of any tag, appended as ``(tag, value)``."""

    def __init__(self) -> None:
        super().__init__()
        self.out: list[tuple[t.Any, t.Any]] = []

    def __missing__(self, tag: t.Any) -> Receiver:
        receiver = self[tag] = _TagReceiver(tag, self.out)
        return receiver


class _TagReceiver(Receiver):
    def __init__(self, tag: t.Any, out: list) -> None:
        self.tag, self.out = tag, out

    def receive(self, windowed_value: t.Any) -> None:
        self.out.append((self.tag, windowed_value.value))


# Per worker process: DoFns already set up, by step, reused by its later bundles as Beam's runners do
# (a model stage loads its model once per worker thread, not once per bundle).
# Only the latest run's are kept: a long-lived cluster does not pile up the models of earlier runs.
_IDLE: dict[tuple[str, str, str], list[tuple]] = {}
_IDLE_RUN = [""]
_IDLE_LOCK = threading.Lock()


def _take_dofn(key: tuple[str, str, str]) -> t.Optional[tuple]:
    stale: list[tuple] = []
    with _IDLE_LOCK:
        if _IDLE_RUN[0] != key[0]:
            stale = [entry for entries in _IDLE.values() for entry in entries]
            _IDLE.clear()
            _IDLE_RUN[0] = key[0]
        idle = _IDLE.setdefault(key, [])
        reused = idle.pop() if idle else None
    for fn, _, _ in stale:  # best effort, as Beam's teardown is
        try:
            fn.teardown()
        except Exception:  # noqa: BLE001
            LOG.warning("teardown of a DoFn of an earlier run failed", exc_info=True)
    return reused


def _run_bundle(items: t.Iterable[t.Any], run_id: str, label: str, payload: bytes, window_fn: t.Any,
                side_specs: list, *side_values: list) -> list[tuple[t.Any, t.Any]]:
    """One bundle (a dask partition) through a set-up DoFn of this worker; outputs after finish_bundle."""
    key = (run_id, label, hashlib.sha256(payload).hexdigest())
    reused = _take_dofn(key)
    fn, args, kwargs = reused or pickler.loads(payload)
    receivers = _Receivers()
    handler = _OutputHandler(window_fn=window_fn, main_receivers=receivers[None], tagged_receivers=receivers,
                             per_element_output_counter=None, output_batch_converter=None,
                             process_yields_batches=False, process_batch_yields_elements=False)
    sides = [SideInputMap(view_class, options, [get_windowed_value(v, wfn) for v in values])
             for (view_class, options, wfn), values in zip(side_specs, side_values)]
    invoker = DoFnInvoker.create_invoker(DoFnSignature(fn), handler, context=DoFnContext(label, state=None),
                                         side_inputs=sides, input_args=args, input_kwargs=kwargs,
                                         user_state_context=None, bundle_finalizer_param=DoFn.BundleFinalizerParam())
    container = MetricsContainer(label)
    sampler = statesampler.StateSampler(label, counters.CounterFactory())
    statesampler.set_current_tracker(sampler)
    try:
        with sampler.scoped_state(label, "process", metrics_container=container):
            if reused is None:
                invoker.invoke_setup()
            invoker.invoke_start_bundle()
            for item in items:
                invoker.invoke_process(get_windowed_value(item, window_fn))
            invoker.invoke_finish_bundle()
    finally:
        statesampler.set_current_tracker(None)
    with _IDLE_LOCK:  # kept only after a bundle that succeeded (a failed one's DoFn is dropped, not torn down)
        _IDLE.setdefault(key, []).append((fn, args, kwargs))
    return receivers.out + [(METRICS_TAG, container.get_cumulative())]


def _key(item: tuple) -> t.Any:
    return item[0]


def _grouped(kv: tuple) -> tuple:
    key, items = kv
    return key, [defenestrate(item[1]) for item in items]


def _concat(parts: t.Iterable[list]) -> list:
    return list(itertools.chain.from_iterable(parts))


def _pick(outputs: list[tuple[t.Any, t.Any]], tag: t.Any) -> list:
    return [value for out_tag, value in outputs if out_tag == tag]


def _finish(*parts: list) -> list:
    """The run's one final task: the metric updates of every bundle (the sinks' parts are empty)."""
    return _concat(parts)


def _nothing(partition: t.Iterable[t.Any]) -> list:
    for _ in partition:  # consumed, not shipped to the client
        pass
    return []


def _parts(bag: db.Bag) -> list:
    return bag.to_delayed(optimize_graph=False)


class _Translator(PipelineVisitor):
    """Beam leaf transforms -> dask bags, one bag per PCollection."""

    def __init__(self, bag_kwargs: dict, workers: int) -> None:
        self.bag_kwargs, self.workers = bag_kwargs, workers
        self.bags: dict[t.Any, db.Bag] = {}
        self.run_id = uuid.uuid4().hex
        self.consumed: set[t.Any] = set()
        self.metrics: list[t.Any] = []  # one dask Delayed per bundle: its metric updates

    def visit_transform(self, node: t.Any) -> None:
        inputs = [self.bags.get(i) for i in node.inputs if i in self.bags]
        self.consumed.update(node.inputs)
        self.consumed.update(si.pvalue for si in node.side_inputs)
        transform = node.transform
        if type(transform) is _Create:
            out: t.Any = Create(node, bag_kwargs=self.bag_kwargs).apply(None)
        elif type(transform) is _GroupByKeyOnly:  # a task shuffle, hashed by dask's tokenize (the same in every
            out = inputs[0].groupby(_key, shuffle="tasks").map(_grouped)  # worker; 'disk' is one machine's)
        elif type(transform) is Impulse:  # one empty element (the stock runner gives its consumers no bag)
            out = db.from_sequence([b""], npartitions=1)
        elif type(transform) is _Flatten:
            out = db.concat(inputs)
        elif type(transform) is _Reshuffle:  # spread over the cluster (the stock runner passes it through)
            out = inputs[0].repartition(npartitions=max(inputs[0].npartitions, self.workers))
        elif type(transform) is BeamParDo:
            # each bundle one task, its outputs picked by tag (dask's blockwise fusion would run a
            # map_partitions step once per consumer: side effects and metrics repeated)
            raw = self._pardo(node, inputs[0])
            self.metrics += [dask.delayed(_pick)(part, METRICS_TAG) for part in raw]
            for tag, pcoll in node.outputs.items():
                self.bags[pcoll] = db.from_delayed([dask.delayed(_pick)(part, tag) for part in raw])
            return
        else:  # GroupAlsoByWindow (grouping is done above) ...: identity, as in the stock runner
            out = inputs[0] if inputs else None
        for pcoll in node.outputs.values():
            self.bags[pcoll] = out

    def _pardo(self, node: t.Any, bag: db.Bag) -> list:
        transform = node.transform
        if DoFnSignature(transform.fn).is_stateful_dofn():
            raise NotImplementedError(f"{node.full_label}: stateful DoFns are not supported on --runner dask")
        args, kwargs = transform.raw_side_inputs
        main = node.inputs[0]
        window_fn = main.windowing.windowfn if hasattr(main, "windowing") else None
        specs, values = [], []
        for si in node.side_inputs:
            specs.append((type(si), si._view_options(), si._window_mapping_fn))
            values.append(dask.delayed(_concat)(_parts(self.bags[si.pvalue])))  # one task, computed once
        payload = dask.delayed(pickler.dumps((transform.fn, list(args), kwargs)))
        return [dask.delayed(_run_bundle)(part, self.run_id, node.full_label, payload, window_fn, specs, *values)
                for part in _parts(bag)]


class FineHardDaskResult(DaskRunnerResult):
    """Waits for every sink, gathers the metric updates, closes what the runner started."""

    def __init__(self, client: t.Any, futures: t.Sequence[t.Any], cluster: t.Any = None) -> None:
        self.cluster, self._metrics = cluster, DirectMetrics()
        super().__init__(client, futures)

    def wait_until_finish(self, duration: t.Any = None) -> str:
        if self._state in (PipelineState.DONE, PipelineState.FAILED):
            return self._state
        try:
            try:  # the sinks add nothing to the result: it is the bundles' metric updates
                updates = self.futures[0].result(timeout=None if duration is None else duration / 1000)
            except ddist.TimeoutError:
                return self._state  # still running
            for update in updates:
                self._metrics.commit_logical(None, update)
                self._metrics.commit_physical(None, update)
            self._state = PipelineState.DONE
        except BaseException:
            self._state = PipelineState.FAILED
            self.close()
            raise
        self.close()
        return self._state

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None

    def cancel(self) -> str:
        state = super().cancel()
        self.close()
        return state

    def metrics(self) -> DirectMetrics:
        """The committed counters and distributions of every bundle (``query()`` as on the DirectRunner)."""
        return self._metrics


class FineHardDaskRunner(DaskRunner):
    """The DaskRunner with the fixes above; see the module docstring."""

    def run_pipeline(self, pipeline: t.Any, options: t.Any) -> FineHardDaskResult:
        dask_options = options.view_as(DaskOptions).get_all_options(drop_default=True, current_only=True)
        bag_kwargs = DaskOptions._extract_bag_kwargs(dask_options) or {"partition_size": 128}  # stock default, unwarned
        cluster = None
        if not dask_options.get("address") and not dask_options.get("scheduler_file"):
            cluster = ddist.LocalCluster(n_workers=LOCAL_WORKERS, threads_per_worker=1, processes=True,
                                         host="127.0.0.1", dashboard_address="127.0.0.1:0")
            dask_options["address"] = cluster.scheduler_address
            LOG.info("--runner dask: started a local dask cluster at %s", cluster.scheduler_address)
        client = ddist.Client(**dask_options)
        try:
            pipeline.replace_all(dask_overrides())
            translator = _Translator(bag_kwargs, workers=max(1, sum(client.nthreads().values())))
            pipeline.visit(translator)
            sinks = [dask.delayed(_nothing)(part) for pcoll, bag in translator.bags.items()
                     if pcoll not in translator.consumed and bag is not None for part in _parts(bag)]
            futures = [client.compute(dask.delayed(_finish)(*translator.metrics, *sinks))]
        except BaseException:
            client.close()
            if cluster is not None:
                cluster.close()
            raise
        return FineHardDaskResult(client, futures, cluster)
