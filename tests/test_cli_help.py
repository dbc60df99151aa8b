"""Every command's --help names each flag's default; train's overrides say what they set and the stage configs' values."""
from __future__ import annotations

import argparse
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FLAGS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction, argparse._HelpAction,
         argparse._VersionAction, argparse._CountAction)  # their default is the flag's absence


class _Shown(Exception):
    """Raised instead of printing a parser's help: the parser is kept."""


def every_parser(monkeypatch: pytest.MonkeyPatch) -> dict[str, argparse.ArgumentParser]:
    """The parser of every ``finehard`` command, as its ``--help`` builds it."""
    from pipeline.cli import COMMANDS, main

    parsers: dict[str, argparse.ArgumentParser] = {}

    def keep(self: argparse.ArgumentParser, file: object = None) -> None:
        parsers[self.prog] = self
        raise _Shown

    monkeypatch.setattr(argparse.ArgumentParser, "print_help", keep)
    for command in COMMANDS:
        with pytest.raises(_Shown):
            main([command, "--help"])
    assert len(parsers) == len(COMMANDS)
    return parsers


def test_every_flag_with_a_default_shows_it_in_help(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = []
    checked = 0
    for prog, parser in every_parser(monkeypatch).items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or action.default in (None, argparse.SUPPRESS) or isinstance(action, FLAGS):
                continue
            checked += 1
            text = formatter._expand_help(action)
            if f"default: {action.default}" not in text:
                missing.append(f"{prog} {action.option_strings[0]} (default {action.default!r}): {text}")
    assert not missing, "\n".join(missing)
    assert checked >= 35  # shards alone has 30


def test_train_overrides_say_what_they_set_and_each_stage_config_default(monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    parser = every_parser(monkeypatch)["finehard train"]
    from training.config import default_config_path

    stage1, stage2 = (yaml.safe_load(open(default_config_path(n)).read()) for n in (1, 2))  # the default recipe
    formatter = parser._get_formatter()
    overrides = {a.dest: formatter._expand_help(a) for a in parser._actions
                 if a.dest in stage1 and a.dest not in ("stage", "recipe")}  # --recipe picks the files themselves
    assert len(overrides) >= 25
    for dest, text in overrides.items():
        assert not text.startswith("override "), text  # what it sets, not only its name
        def shown(v: object) -> str:
            return " ".join(map(str, v)) if isinstance(v, list) else str(v)
        assert f"stage 1 {shown(stage1[dest])}, stage 2 {shown(stage2[dest])}" in text, (dest, text)
    assert "stage 1 0.0001, stage 2 1e-06" in overrides["lr"]


def test_samples_per_shard_is_documented_as_a_target_not_a_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = every_parser(monkeypatch)["finehard shards"]
    action = next(a for a in parser._actions if "--samples-per-shard" in a.option_strings)
    text = parser._get_formatter()._expand_help(action)
    assert "target" in text and "not a cap" in text and "sha1(key) mod N" in text
    readme = (ROOT / "README.md").read_text()
    assert "`--samples-per-shard` is a target, not a cap" in readme
