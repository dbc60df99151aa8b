"""FG-CLIP training on FineHARD WebDataset shards: stage 1 (global) and stage 2 (global + regional + hard)."""

__all__ = ["cli", "config", "data", "evaluate", "losses", "model", "tokenizer", "train"]
