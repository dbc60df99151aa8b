"""A test captioner: the stub's captions, and the id of the worker process of every call in a log file.

Used by tests/test_scale_out.py to see which processes run the model stages; not a project engine.
"""
from __future__ import annotations

import os
from typing import Any

from model_stubs.captioner import StubCaptioner


class PidLoggingCaptioner(StubCaptioner):
    def caption(self, images: list[Any]) -> list[str]:
        with open(os.environ["FINEHARD_TEST_PID_LOG"], "a", encoding="utf-8") as f:
            f.write(f"{os.getpid()} {len(images)}\n")
        return super().caption(images)


def build(spec: Any, **options: Any) -> PidLoggingCaptioner:
    return PidLoggingCaptioner(spec, **options)
