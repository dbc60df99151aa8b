"""DropDuplicates: exact (content sha256) and near (perceptual dHash) duplicate images, before the models.

What is a duplicate, which of a group is kept and how the filtered detail reads is decided in
``stages.dedup``; here Beam groups the records by content hash and by LSH band to find the pairs.
"""
from __future__ import annotations

from typing import Optional

import apache_beam as beam

from core.record import Field
from stages.dedup import KEEP_POLICIES, Ref, add_hashes, bands, exact_pairs, mark_duplicate, near_pairs, rank


class DropDuplicates(beam.PTransform):
    """Mark exact and near duplicates filtered; ``near_threshold < 0`` keeps only the exact check.

    ``known`` (from ``stages.dedup.duplicates_of``) marks those decisions instead of taking them here: a wave
    of a local run sees only part of the input. ``keep``: which of a group is kept (``stages.dedup.rank``).
    """

    def __init__(self, near_threshold: int = 6, known: Optional[dict[str, Ref]] = None, keep: str = "first"):
        super().__init__()
        if keep not in KEEP_POLICIES:
            raise ValueError(f"--dedup-keep {keep!r}: give one of {', '.join(KEEP_POLICIES)}")
        self.near_threshold = near_threshold
        self.known = known
        self.keep = keep

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        t, keep = self.near_threshold, self.keep
        if self.known is not None:
            return (records | "Hash" >> beam.Map(add_hashes, near=False)
                    | "MarkDuplicates" >> beam.Map(mark_duplicate, duplicates=self.known))
        hashed = records | "Hash" >> beam.Map(add_hashes, near=t >= 0)
        exact = (hashed
                 | "BySha" >> beam.Map(lambda r: (r[Field.SHA256], (rank(r, keep), r["key"])))
                 | "GroupSha" >> beam.GroupByKey()
                 | "ExactPairs" >> beam.FlatMap(exact_pairs))
        found = [exact]
        if t >= 0:
            found.append(hashed
                         | "Bands" >> beam.FlatMap(lambda r: [(b, (rank(r, keep), r["key"], r[Field.DHASH],
                                                                   r[Field.THUMB]))
                                                             for b in bands(r[Field.DHASH], t)])
                         | "GroupBand" >> beam.GroupByKey()
                         | "NearPairs" >> beam.FlatMap(near_pairs, threshold=t))
        # per key: the earliest-ranked reference, an exact match before a near one, then the smallest distance
        duplicates = (found | "AllPairs" >> beam.Flatten()
                      | "Closest" >> beam.CombinePerKey(min))
        return hashed | "MarkDuplicates" >> beam.Map(mark_duplicate, duplicates=beam.pvalue.AsDict(duplicates))
