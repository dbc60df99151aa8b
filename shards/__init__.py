"""The output folder's contract: writing shards and markers, reading them back, stats, preview, exports (no Beam)."""
