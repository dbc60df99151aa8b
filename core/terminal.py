"""Text that reaches a terminal: what came from the input (URLs, keys, engine answers) is shown, never obeyed."""
from __future__ import annotations

import unicodedata

# Bidirectional controls reorder what follows them on the screen (fake text); shown like the C0/C1 controls.
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def printable(text: object, keep_newlines: bool = False) -> str:
    """``text`` with every control character written out (``\\x1b``, ``\\n``, ``\\u202e``): an escape
    sequence in a manifest URL, a key or an engine's answer cannot set the window title, clear the
    screen or move the cursor. ``keep_newlines`` keeps ``\\n`` and ``\\t`` (multi-line log messages)."""
    s = text if isinstance(text, str) else str(text)
    if s.isprintable():
        return s
    out = []
    for ch in s:
        code = ord(ch)
        if keep_newlines and ch in "\n\t":
            out.append(ch)
        elif code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        elif ch in _BIDI_CONTROLS or 0xD800 <= code <= 0xDFFF or unicodedata.category(ch) in ("Cc", "Cs"):
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)
