"""Beam transforms, one module per stage of the FineHARD chain.

Workers start light: Beam's ``apache_beam.ml.inference.base`` imports its GPU ``ModelManager``
(and with it torch, ~3 s and most of a worker's memory) inside ``try/except ImportError``, only
for ``RunInference(use_model_manager=True)``, which this project never asks for. Marking that
module absent before the first RunInference import makes Beam take its own fallback
(``ModelManager = None``); engines that need torch import it themselves, in the processes that
run them.
"""
import sys

sys.modules.setdefault("apache_beam.ml.inference.model_manager", None)  # type: ignore[arg-type]
