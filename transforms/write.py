"""WriteShards: the Beam side of writing shards: tag records with their shard, skip finished
shards, group by shard and hand each group to ``shards.write.write_shard``.

Membership comes from the key (``shards.write.shard_of``), never from bundling; what each shard's
files hold and how they are made durable is described in ``shards.write``.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional

import apache_beam as beam

from core.record import Field
from shards.write import num_shards_for, shard_of, write_shard


class _WriteShardFn(beam.DoFn):
    def __init__(self, output: str, run_info: dict[str, Any]):
        self.output, self.run_info = output, run_info

    def process(self, element: tuple[tuple[int, int], Iterable[dict[str, Any]]]) -> Iterable[dict[str, Any]]:
        (shard_id, num_shards), items = element
        yield write_shard(self.output, shard_id, num_shards, items, self.run_info)


class AssignShards(beam.PTransform):
    """Tag each record with ``Field.SHARD = (shard_id, num_shards)``.

    With ``num_shards`` decided up front (from the listing, or ``--num-shards``) this is a plain
    Map: records go on to the model stages as they are read. Without it the count of everything
    read decides (a global barrier: no record reaches a model stage before the whole input is read).
    """

    def __init__(self, samples_per_shard: int, num_shards: Optional[int] = None):
        super().__init__()
        self.samples_per_shard = samples_per_shard
        self.num_shards = num_shards

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        sps, fixed = self.samples_per_shard, self.num_shards
        if fixed:
            def assign_fixed(rec: dict[str, Any]) -> dict[str, Any]:
                rec[Field.SHARD] = (shard_of(rec["key"], fixed), fixed)
                return rec

            return records | "Assign" >> beam.Map(assign_fixed)
        count = records | "Count" >> beam.combiners.Count.Globally()

        def assign(rec: dict[str, Any], n: int) -> dict[str, Any]:
            shards = num_shards_for(n, sps)
            rec[Field.SHARD] = (shard_of(rec["key"], shards), shards)
            return rec

        return records | "Assign" >> beam.Map(assign, n=beam.pvalue.AsSingleton(count))


class SkipCompleted(beam.PTransform):
    """Drop records whose shard already has its stats marker (resume)."""

    def __init__(self, done: set[int]):
        super().__init__()
        self.done = frozenset(done)

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        done = self.done
        return records | "SkipDone" >> beam.Filter(lambda r: r[Field.SHARD][0] not in done)


class WriteShards(beam.PTransform):
    """All outcomes (written, dead, filtered), grouped by shard -> shard files; emits shard stats."""

    def __init__(self, output: str, run_info: dict[str, Any]):
        super().__init__()
        self.output, self.run_info = output, run_info

    def expand(self, outcomes: beam.PCollection) -> beam.PCollection:
        return (outcomes
                | "ByShard" >> beam.Map(lambda r: (r[Field.SHARD], r))
                | "Group" >> beam.GroupByKey()
                | "Write" >> beam.ParDo(_WriteShardFn(self.output, self.run_info)))
