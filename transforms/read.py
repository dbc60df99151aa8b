"""ReadImages: folder/glob of images, parquet/jsonl manifests, or img2dataset WebDataset tars.

The input is expanded into a few *read units* (a chunk of file paths, one manifest, one tar),
which are reshuffled across workers and read with a FlatMap: no large ``beam.Create``.
Every input item comes out as exactly one record with a stable key: read, or marked dead
(``unreadable``, ``file_too_large``, ``not_a_regular_file``, ``unsupported_scheme`` ...) or
filtered (``unsupported_format``, ``skipped_file``) with a reason; nothing raises out of a unit.

Only the Beam wiring is here; listing (``inputs.units``), opening (``inputs.opening``) and reading
(``inputs.reader``) are plain Python in ``inputs/``.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import apache_beam as beam

from core.record import MAX_IMAGE_BYTES, ROWS_PER_UNIT
from inputs.check import MAX_SHORT_CAPTION_CHARS, check_image
from inputs.reader import read_and_check
from inputs.units import list_units, split_unit


class ReadImages(beam.PTransform):
    """``input_uri`` -> records ``{key, f_path, short_caption, image_bytes, width, height, ext}``.

    ``want`` (picklable; ``transforms.write.ShardRange`` for a wave of a local run) keeps only the
    records whose key it accepts; the others are counted, and not read where the reader can skip them.
    """

    def __init__(self, input_uri: str, max_pixels: int = 64_000_000, min_side: int = 8,
                 max_short_caption_chars: int = MAX_SHORT_CAPTION_CHARS, max_image_bytes: int = MAX_IMAGE_BYTES,
                 counts_root: Optional[str] = None, rows_per_unit: int = ROWS_PER_UNIT, near_hashes: bool = False,
                 want: Optional[Callable[[str], bool]] = None):
        super().__init__()
        self.want = want
        self.near_hashes = near_hashes
        self.rows_per_unit = rows_per_unit
        self.input_uri = input_uri
        self.max_pixels = max_pixels
        self.min_side = min_side
        self.max_short_caption_chars = max_short_caption_chars
        self.max_image_bytes = max_image_bytes
        self.counts_root = counts_root

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        max_pixels, min_side, max_alt = self.max_pixels, self.min_side, self.max_short_caption_chars
        # The input goes in as an argument (pickled), not as an element: Beam's str coder cannot
        # carry a path whose undecodable bytes Python keeps as lone surrogates.
        return (pbegin
                | "Input" >> beam.Create([None])
                | "ListUnits" >> beam.FlatMap(lambda _, uri: list_units(uri), uri=self.input_uri)
                | "SpreadUnits" >> beam.Reshuffle()
                | "SplitManifests" >> beam.FlatMap(split_unit, rows_per_unit=self.rows_per_unit)
                | "SpreadParts" >> beam.Reshuffle()  # the parts of one manifest go to different workers
                # each image checked (decoded once) right after it is read, in a thread pool (checked())
                | "ReadUnit" >> beam.FlatMap(read_and_check, functools.partial(
                    check_image, max_pixels=max_pixels, min_side=min_side, max_short_caption_chars=max_alt,
                    near_hashes=self.near_hashes), max_image_bytes=self.max_image_bytes, counts_root=self.counts_root,
                    want=self.want))
