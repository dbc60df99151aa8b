"""Deterministic stand-ins with the interfaces of the real engines.

They exist so the whole chain runs on a laptop and in tests. On synthetic scenes (whose ground
truth is embedded in the JPEG, see ``core.synthetic``) they act as oracles; on any other
image they give generic output. Every record they touch says ``stub`` in its provenance.
"""
