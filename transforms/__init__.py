"""Beam transforms, one module per stage of the FineHARD chain."""
