""".dockerignore: `docker build -f deploy/Dockerfile .` sends the image's sources, not the venv.

No Docker daemon here, so the rules are read the way Docker reads them (a path is left out when
the last pattern matching it, or one of its parent folders, is not a ``!`` exception; ``*`` stops at
``/``, ``**`` spans folders) and applied to the paths that matter.
"""
from __future__ import annotations

import glob
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def _rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        rules.append((keep, _regex(line.lstrip("!").strip("/"))))
    return rules


def excluded(path: str) -> bool:
    """Whether Docker leaves ``path`` (relative to the context) out of the build context."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    out = False
    for keep, rx in _rules():
        if any(rx.match(c) for c in candidates):
            out = not keep
    return out


def copied_sources() -> list[str]:
    """The context paths deploy/Dockerfile COPYs (globs expanded; not ``COPY --from=stage``)."""
    sources = []
    for line in (ROOT / "deploy" / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            for src in words[1:-1]:
                found = sorted(glob.glob(str(ROOT / src)))
                assert found, f"deploy/Dockerfile copies {src}, which the checkout does not have"
                sources += [str(pathlib.Path(f).relative_to(ROOT)) for f in found]
    return sources


def test_the_build_context_leaves_out_the_venv_caches_outputs_and_git() -> None:
    for path in (".venv/bin/python", ".venv/lib/python3.11/site-packages/torch/lib/libtorch.so",
                 ".cache/wheels/a.whl", "out/shard-00000.tar", "out/deadletter/shard-00000.jsonl", ".git/HEAD",
                 "core/__pycache__/engines.cpython-311.pyc", "finehard.egg-info/PKG-INFO", ".pytest_cache/v/x"):
        assert excluded(path), path


def test_every_file_the_dockerfile_copies_is_in_the_build_context() -> None:
    sources = copied_sources()
    assert {"setup.py", "core", "pipeline", "transforms", "prompts", "training", "deploy/entrypoint.sh"} <= set(sources)
    for src in sources:
        assert not excluded(src), src
        files = [src] if (ROOT / src).is_file() else [str(p.relative_to(ROOT)) for p in (ROOT / src).rglob("*")
                                                        if p.is_file() and "__pycache__" not in p.parts]
        for f in files:
            assert not excluded(f), f


def test_the_matcher_reads_patterns_as_docker_does() -> None:
    # a sanity check of this file's reader on rules whose meaning Docker documents
    rx = _regex("**/*.pyc")
    assert rx.match("a.pyc") and rx.match("x/y/a.pyc") and not rx.match("x/a.py")
    assert _regex("out").match("out") and not _regex("out").match("outside")
    assert _regex("*.md").match("README.md") and not _regex("*.md").match("docs/x.md")
