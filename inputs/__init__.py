"""Turning an input (folder, glob, manifest, tars; local, http or fsspec) into records, in plain Python (no Beam)."""
