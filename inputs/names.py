"""What a path's name says: an image by its extension, a parquet or jsonl manifest, its name under the input's root."""
from __future__ import annotations

import os

from core.record import IMAGE_EXTS

IMAGE_SUFFIXES = tuple("." + e for e in IMAGE_EXTS)


def has_image_ext(uri: str) -> bool:
    return uri.lower().split("?")[0].endswith(IMAGE_SUFFIXES)


def _is_parquet(uri: str) -> bool:
    return uri.lower().split("?")[0].endswith(".parquet")


def _is_jsonl(uri: str) -> bool:
    return uri.lower().split("?")[0].endswith(".jsonl")


def _relative_name(uri: str, root: str) -> str:
    return uri[len(root):].lstrip("/") if root and uri.startswith(root) else uri.rsplit("/", 1)[-1]


def _relative_stem(uri: str, root: str) -> str:
    return os.path.splitext(_relative_name(uri, root))[0]
