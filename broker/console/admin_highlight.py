"""Cedar syntax highlighting for the console, on the server: text in, escaped HTML out.

A small tokenizer that knows enough of Cedar policies and Cedar schemas to colour them:
comments, strings, annotations (``@id``), keywords, entity types (``Istmo::Action``),
numbers and operators. Every token becomes ``<span class="cd-...">`` with its text
escaped; the colours live in the console's stylesheet (no inline styles, no script).
Whatever it does not recognise is passed through escaped, so a highlighter bug can make
a page dull but never unsafe or different in content.

Left to others: parsing and validating policies (``broker.policy.engine``).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

__all__ = ["MAX_HIGHLIGHT_CHARS", "Line", "highlight_lines"]

MAX_HIGHLIGHT_CHARS = 1024 * 1024  # beyond this the text is shown plain, still escaped

_KEYWORDS = frozenset(
    {
        # policies
        "permit",
        "forbid",
        "when",
        "unless",
        "principal",
        "action",
        "resource",
        "context",
        "in",
        "has",
        "like",
        "is",
        "if",
        "then",
        "else",
        # schemas
        "namespace",
        "entity",
        "type",
        "appliesTo",
        "enum",
        "tags",
    }
)
_LITERALS = frozenset({"true", "false"})
_TYPES = frozenset({"Bool", "Boolean", "Long", "String", "Set", "Record", "Entity", "Extension"})

_TOKEN = re.compile(
    r"""
    (?P<comment>//[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"?)
  | (?P<annotation>@[A-Za-z_][A-Za-z0-9_]*)
  | (?P<path>[A-Za-z_][A-Za-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)+)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<number>-?[0-9]+)
  | (?P<operator>==|!=|<=|>=|&&|\|\||::|[<>!+\-*=])
  | (?P<punct>[(){}\[\],;.:])
  | (?P<space>\s+)
  | (?P<other>.)
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class Line:
    """One highlighted line: its 1-based number and its escaped HTML."""

    number: int
    html: str


def _classify(kind: str, text: str) -> str | None:
    if kind == "word":
        if text in _KEYWORDS:
            return "cd-kw"
        if text in _LITERALS:
            return "cd-lit"
        if text in _TYPES:
            return "cd-type"
        return None
    return {
        "comment": "cd-com",
        "string": "cd-str",
        "annotation": "cd-ann",
        "path": "cd-type",
        "number": "cd-num",
        "operator": "cd-op",
    }.get(kind)


def _line_html(line: str) -> str:
    out: list[str] = []
    for m in _TOKEN.finditer(line):
        kind, text = m.lastgroup or "other", m.group()
        css = _classify(kind, text)
        escaped = html.escape(text, quote=True)
        out.append(f'<span class="{css}">{escaped}</span>' if css else escaped)
    return "".join(out)


def highlight_lines(text: str) -> list[Line]:
    """``text`` as highlighted lines (strings and comments never span lines in the
    policies we show; an unterminated string runs to the end of its line).

    Text longer than ``MAX_HIGHLIGHT_CHARS`` is returned escaped but not highlighted.
    """
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    if len(text) > MAX_HIGHLIGHT_CHARS:
        return [Line(i, html.escape(t, quote=True)) for i, t in enumerate(lines, 1)]
    return [Line(i, _line_html(t)) for i, t in enumerate(lines, 1)]
