"""Stage logic and the engines, in plain Python: recaption, expressions, detect, negatives, dedup (no Beam here)."""
