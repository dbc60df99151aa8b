"""``--help`` that shows every flag's default: the formatter all of this project's command lines use."""
from __future__ import annotations

import argparse

# flags whose default is their absence: "--overwrite (default: False)" says nothing
_FLAG_ACTIONS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction,
                 argparse._HelpAction, argparse._VersionAction, argparse._CountAction)


def shows_default(action: argparse.Action) -> bool:
    """Whether ``--help`` should name this action's default (an option with a value that is not None)."""
    return (bool(action.option_strings) and action.default is not None and action.default is not argparse.SUPPRESS
            and not isinstance(action, _FLAG_ACTIONS))


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to the help of every option with a default, unless the help names
    ``%(default)s`` itself (argparse's ArgumentDefaultsHelpFormatter also prints ``(default: None)``
    and ``(default: False)``)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if shows_default(action) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


class RawDescriptionDefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultsHelpFormatter):
    """:class:`DefaultsHelpFormatter` keeping the description's and epilog's own line breaks."""
