"""Ground floor: the vocabulary every layer shares (engine specs, the record). Imports nothing of ours."""
