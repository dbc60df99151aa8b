"""The preview shows what did not make it: dead-lettered and filtered samples, and why negatives are missing."""
from __future__ import annotations

import pathlib
import shutil

from conftest import run_pipeline
from fake_openai_server import FakeOpenAIServer, completion
from shards.preview import preview_main


def test_preview_shows_failed_samples_and_invalid_negatives_reasons(scenes_dir: pathlib.Path,
                                                                    tmp_path: pathlib.Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    scenes = sorted(p for p in scenes_dir.iterdir() if p.suffix in (".jpg", ".png"))[:2]
    for p in scenes:
        shutil.copy(p, images / p.name)
    shutil.copy(scenes[0], images / f"copy_of_{scenes[0].name}")  # an exact duplicate: filtered
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")  # dead-lettered while reading
    out = tmp_path / "out"
    with FakeOpenAIServer(lambda b: (200, completion('["just one"]'))) as srv:
        run_pipeline(images, out, "--negatives", f"openai:{srv.url}?structured=none#m", "--negatives-retries", "0",
                     "--runner", "FnApiRunner")
    page_path = tmp_path / "p.html"
    assert preview_main([str(out), "--out", str(page_path)]) == 0
    page = page_path.read_text()
    failed = page[page.index('id="failed"'):]
    assert 'class="badge dead-lettered"' in failed and 'class="badge filtered"' in failed
    assert '<span class="stage">read</span>' in failed and "(image not readable)" in failed  # the broken file
    assert '<span class="stage">dedup</span>' in failed and failed.count("data:image/") == 1  # the duplicate, shown
    assert "no valid negatives: wrong_count" in page[:page.index('id="failed"')]
    assert 'class="why-invalid">answer: [&quot;just one&quot;]' in page
