"""The house's layers: every package imports only from the layers below it, and no module cycle exists.

core <- prompts <- inputs, stages <- shards (core, inputs) <- transforms (Beam) <- pipeline <- bench, tests;
model_stubs and training <- core only. Imports inside functions count too (a lazy import is still a
dependency); no module forwards names through a module ``__getattr__``; only transforms/ and pipeline/
import Beam. A module stays under 400 lines and a function under 60 unless its docstring says why.
"""
from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
OURS = ("core", "prompts", "inputs", "stages", "shards", "transforms", "model_stubs", "training", "pipeline", "bench")
ALLOWED = {
    "core": {"core"},
    "prompts": {"prompts"},
    "inputs": {"core", "inputs"},
    "stages": {"core", "prompts", "stages"},
    "shards": {"core", "inputs", "shards"},
    "transforms": {"core", "prompts", "inputs", "stages", "shards", "transforms"},
    "model_stubs": {"core", "model_stubs"},
    "training": {"core", "training"},
    "pipeline": {"core", "prompts", "inputs", "stages", "shards", "transforms", "model_stubs", "training", "pipeline"},
    "bench": set(OURS),
}


def modules() -> dict[str, pathlib.Path]:
    found = {}
    for package in OURS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def all_imports(path: pathlib.Path, names_too: bool = False) -> set[str]:
    """Every module ``path`` imports, ours or not, inside functions too; with ``names_too``, ``from a.b import c``
    also gives ``a.b.c`` (``c`` may be a module)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if names_too:
                names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def imports(path: pathlib.Path) -> set[str]:
    """The modules of ours that ``path`` imports, inside functions too (``from a.b import c`` gives ``a.b``
    and ``a.b.c``)."""
    return {n for n in all_imports(path, names_too=True) if n.split(".")[0] in OURS}


MODULES = modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_imports_only_from_its_layer_or_below(module: str) -> None:
    layer = module.split(".")[0]
    wrong = sorted(n for n in imports(MODULES[module]) if n.split(".")[0] not in ALLOWED[layer])
    assert not wrong, f"{module} ({layer}/) imports {wrong}; {layer}/ may import only {sorted(ALLOWED[layer])}"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (module -> modules it imports), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        state[m] = 2
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycle_between_modules() -> None:
    """Imports inside functions count: a lazy import that closes a circle is still a circle."""
    cycle = find_cycle({m: {n for n in imports(p) if n in MODULES and n != m} for m, p in MODULES.items()})
    assert cycle is None, "import cycle (imports inside functions count): " + " -> ".join(cycle or [])


def test_the_cycle_check_sees_a_cycle_made_of_lazy_imports() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


BEAM_LAYERS = {"transforms", "pipeline", "bench"}  # the only packages that may import apache_beam (tests too)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.split(".")[0] not in BEAM_LAYERS))
def test_below_transforms_no_module_imports_beam_not_even_lazily(module: str) -> None:
    beam = sorted(n for n in all_imports(MODULES[module]) if n.split(".")[0] == "apache_beam")
    assert not beam, f"{module} imports {beam}: Beam lives in transforms/ and pipeline/ only"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_forwards_names_through_a_module_getattr(module: str) -> None:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    shims = [n.lineno for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "__getattr__"]
    assert not shims, f"{module}:{shims} has a module __getattr__: importers import a name from where it lives"


def test_the_layer_check_sees_a_wrong_import(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from pipeline.run import run\n", encoding="utf-8")
    assert "pipeline.run" in imports(bad)  # a lazy import inside a function is found
    assert not {"pipeline"} <= ALLOWED["transforms"]


STAGE_MODULES = {"stages.caption", "stages.detect", "stages.negatives", "stages.expressions",
                 "transforms.recaption", "transforms.detect", "transforms.negatives", "transforms.expressions"}


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith(("stages.engines", "model_stubs"))))
def test_an_engine_never_imports_its_stage_module(module: str) -> None:
    wrong = sorted(n for n in imports(MODULES[module]) if any(n == s or n.startswith(s + ".") for s in STAGE_MODULES))
    assert not wrong, f"{module} imports {wrong}: what an engine shares with its stage goes in a module both use"


MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
LONG_REASON = "Long because"  # a longer function says why in its docstring


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not m.startswith("bench")))
def test_a_module_stays_under_400_lines(module: str) -> None:
    n = len(MODULES[module].read_text(encoding="utf-8").splitlines())
    assert n <= MAX_MODULE_LINES, f"{module} has {n} lines: split it by job (at most {MAX_MODULE_LINES})"


def long_functions(path: pathlib.Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if n > MAX_FUNCTION_LINES and LONG_REASON not in (ast.get_docstring(node) or ""):
                found.append(f"{node.name} ({n} lines)")
    return found


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not m.startswith("bench")))
def test_a_long_function_says_why_in_its_docstring(module: str) -> None:
    long = long_functions(MODULES[module])
    assert not long, f"{module}: {long} over {MAX_FUNCTION_LINES} lines: split, or say '{LONG_REASON} ...' in the docstring"


def test_the_size_checks_see_a_long_function(tmp_path: pathlib.Path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(70))
    f = tmp_path / "long.py"
    f.write_text("def f():\n" + body + "\n\ndef g():\n    'Long because a table.'\n" + body, encoding="utf-8")
    assert long_functions(f) == ["f (71 lines)"]
