"""Linting a policy file before it is loaded: positions of each policy (Cedar reports
none), parse errors and formatting, and the rules every ``@id`` and override keeps.

Checks 1-6 of ``broker.policy.bundle.PolicyBundle.load``, one file at a time; the problems
are strings ``file[:line]: [@id: ]what``. Left to the engine: the schema, the bundle's
version and deciding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import cedarpy
from cedarpy import PolicySet, Schema, pst

__all__ = ["MAX_ERROR_CHARS", "NAMESPACE", "OVERRIDES_DIR", "lint_file", "shorten_error"]

NAMESPACE = "Istmo"
OVERRIDES_DIR = "overrides"
MAX_ERROR_CHARS = 200
_FOR_POLICY = re.compile(r"^for policy `[^`]*`, ")
_ID_ANNOTATION = re.compile(r'^\s*@id\s*\(\s*"((?:[^"\\]|\\.)*)"\s*\)', re.MULTILINE)
_TRAILING_COMMENT = re.compile(r'\s*//[^"]*$')


@dataclass(frozen=True)
class _Span:
    """Where one policy sits in a file (1-based lines): Cedar reports no positions."""

    first: int
    last: int
    policy_id: str | None


def _spans(text: str) -> list[_Span]:
    """A policy starts at its first line after the previous one's closing ``;``.

    Comment and blank lines between policies belong to none of them.
    """
    lines = text.splitlines()
    spans: list[_Span] = []
    start: int | None = None
    for n, line in enumerate(lines, 1):
        code = _TRAILING_COMMENT.sub("", line.strip())
        if not code or code.startswith("//"):
            continue
        start = n if start is None else start
        if code.endswith(";"):
            spans.append(_span(lines, start, n))
            start = None
    if start is not None:
        spans.append(_span(lines, start, len(lines)))
    return spans


def _span(lines: list[str], first: int, last: int) -> _Span:
    found = _ID_ANNOTATION.search("\n".join(lines[first - 1 : last]))
    return _Span(first, last, found[1] if found else None)


def lint_file(rel: str, text: str, schema: Schema, seen: dict[str, str]) -> list[str]:
    """Checks 1-6 of ``PolicyBundle.load`` for one file; ``seen`` maps @id -> where."""
    spans = _spans(text)
    try:
        tree = PolicySet.from_str(text).to_pst()
    except ValueError as exc:
        return [_parse_problem(rel, text, spans, exc)]
    problems: list[str] = []
    formatted = _format(text)
    if formatted != text:
        problems.append(_format_problem(rel, text, formatted, spans))
    if tree.templates:
        problems.append(f"{rel}: templates are not allowed")
    # Cedar numbers policies policy0, policy1, ... in file order, as _spans does.
    policies = list(tree.static_policies.items())
    lines = dict(zip((pid for pid, _ in policies), spans, strict=False))
    if len(spans) != len(policies):
        lines = {}

    def where(pid: str, policy_id: str) -> str:
        span = lines.get(pid)
        return rel + (f":{span.first}" if span else "") + (f": {policy_id}" if policy_id else "")

    community = rel.removeprefix(f"{OVERRIDES_DIR}/").removesuffix(".cedar")
    is_override = rel.startswith(f"{OVERRIDES_DIR}/")
    for n, (pid, policy) in enumerate(policies, 1):
        policy_id = policy.annotations.get("id", "")
        at = where(pid, policy_id)
        if not policy_id:
            problems.append(f"{at}: policy #{n} in the file has no @id")
        elif policy_id in seen:
            problems.append(f"{at}: duplicate @id (first at {seen[policy_id]})")
        else:
            seen[policy_id] = where(pid, "")
        if not policy.annotations.get("reason"):
            problems.append(f"{at}: no @reason")
        if is_override and not policy_id.startswith(f"{community}."):
            problems.append(f"{at}: an override's @id must start with {community + '.'!r}")
        if is_override and not any(
            u.type == pst.EntityType("Jurisdiction", (NAMESPACE,)) and u.id == community.upper()
            for u in pst.entity_uids(policy)
        ):
            problems.append(f'{at}: does not reference Istmo::Jurisdiction::"{community.upper()}"')
        if any(u.type == pst.EntityType("Bulletin", (NAMESPACE,)) for u in pst.entity_uids(policy)):
            # Decisions are about labels, never one bulletin: the engine reuses a decision
            # for bulletins whose facts are the same (PolicyEngine, _DECISION_CACHE).
            problems.append(f"{at}: names one bulletin; a policy may decide on labels only")
        if is_override and policy.effect == "permit":
            # A permit here could reach past rel_to: grants are reviewed centrally.
            problems.append(
                f"{at}: an override may only add restrictions (forbid); put grants in base.cedar"
            )
    for err in cedarpy.validate_policies(text, schema).errors:
        found = tree.static_policies.get(err.policy_id)
        policy_id = found.annotations.get("id", "") if found else ""
        detail = _FOR_POLICY.sub("", err.error)
        problems.append(f"{where(err.policy_id, policy_id)}: schema: {shorten_error(detail)}")
    return problems


def _parse_problem(rel: str, text: str, spans: list[_Span], exc: ValueError) -> str:
    """Name the first policy that does not parse alone, else the file."""
    lines = text.splitlines()
    for span in spans:
        try:
            PolicySet.from_str("\n".join(lines[span.first - 1 : span.last]))
        except ValueError as inner:
            named = f": {span.policy_id}" if span.policy_id else ""
            return f"{rel}:{span.first}{named}: parse error: {shorten_error(str(inner))}"
    return f"{rel}: parse error: {shorten_error(str(exc))}"


def _format_problem(rel: str, text: str, formatted: str | None, spans: list[_Span]) -> str:
    """Point at the first line that differs from the canonical form."""
    hint = "not in canonical Cedar format (run cedarpy.format_policies)"
    if formatted is None:
        return f"{rel}: {hint}"
    old, new = text.splitlines(), formatted.splitlines()
    line = next((n for n, (a, b) in enumerate(zip(old, new, strict=False), 1) if a != b), 0)
    line = line or min(len(old), len(new)) + 1  # one is a prefix of the other
    named = next(
        (f": {s.policy_id}" for s in spans if s.first <= line <= s.last and s.policy_id), ""
    )
    return f"{rel}:{line}{named}: {hint}"


def _format(text: str) -> str | None:
    try:
        return cedarpy.format_policies(text)
    except ValueError:
        return None


def shorten_error(message: str) -> str:
    # Cedar may quote whole entities ({...}) in an error: keep only the text before them.
    head = message.split("{", 1)[0].strip() or "error (detail withheld)"
    return head[:MAX_ERROR_CHARS]
