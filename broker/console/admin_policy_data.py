"""The policy side of the administrators' console: the set in force as files, a candidate
read from one text, checked and simulated.

A candidate policy set travels between the console's steps as one text: each file after
a line ``// ---- <file>`` (the form in which the set in force is shown). Files it leaves
out are taken from the set in force, unless the administrator asks to replace the whole
set. It is loaded, checked and simulated by the same code as ``POST /v1/policy/validate``
and ``/v1/policy/simulate`` (``broker.api.admin``, ``broker.directory.policy_sets``); adopting it
is the stack's ``adopt_policy``, as over HTTP.

Left to others: HTTP and rendering (``broker.console.admin``), adoption itself
(``broker.directory.policy_sets.adopt`` behind the stack).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from broker.api.admin import MAX_POLICY_FILE_CHARS, load_candidate
from broker.api.context import ApiProblem
from broker.config import default_policy_dir
from broker.directory.policy_sets import simulation_cases
from broker.directory.service import DirectoryService
from broker.policy.engine import PolicyBundle, simulate
from broker.store.registry import Registry

__all__ = [
    "MAX_CANDIDATE_CHARS",
    "CandidateCheck",
    "CandidateError",
    "SimulatedChange",
    "Simulation",
    "active_files",
    "active_schema_text",
    "bundle_files",
    "bundle_text",
    "check_candidate",
    "parse_bundle_text",
    "read_policy_dir",
    "simulate_candidate",
]

# A candidate is carried whole in a form field between steps; the HTTP guard bounds a
# console request body at 64 KiB, and form encoding grows Cedar text by a third or so.
MAX_CANDIDATE_CHARS = 32 * 1024
MAX_FILES = 32
_SCHEMA = "schema.cedarschema"
_FILE_NAME = r"schema\.cedarschema|base\.cedar|overrides/[a-z0-9][a-z0-9-]{0,30}\.cedar"
_HEADER = re.compile(rf"^// ---- ({_FILE_NAME})(?: [^\n]*)?$", re.MULTILINE)
_CANONICAL_HEADER = re.compile(r"// ---- (\S+) (?:sha256:[0-9a-f]{64}|\((\d+) bytes\))\n")


class CandidateError(ValueError):
    """A candidate that cannot even be laid out as a policy set (too big, a bad file
    name): the message names the problem."""


def bundle_files(bundle: PolicyBundle) -> dict[str, str]:
    """The policy files of a loaded bundle (not the schema), from its canonical text."""
    raw = bundle.text.encode("utf-8")
    files: dict[str, str] = {}
    pos = 0
    while pos < len(raw):
        m = _CANONICAL_HEADER.match(raw[pos:].decode("utf-8", "replace"))
        if m is None:
            break
        pos += len(m.group(0).encode("utf-8"))
        if m.group(2) is None:  # the schema: only its digest is in the canonical text
            continue
        size = int(m.group(2))
        files[m.group(1)] = raw[pos : pos + size].decode("utf-8")
        pos += size
    return files


def read_policy_dir(root: Path) -> dict[str, str]:
    """The files of a policy directory laid out like ``policies/`` (schema, base,
    overrides), by name, each bounded in size.

    Raises:
        CandidateError: a file cannot be read or is too large.
    """
    paths = [root / _SCHEMA, root / "base.cedar", *sorted((root / "overrides").glob("*.cedar"))]
    out: dict[str, str] = {}
    for p in paths:
        rel = p.relative_to(root).as_posix()
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CandidateError(f"{rel}: cannot read ({type(exc).__name__})") from exc
        if len(text) > MAX_POLICY_FILE_CHARS:
            raise CandidateError(f"{rel} is longer than {MAX_POLICY_FILE_CHARS} characters")
        out[rel] = text
    return out


def bundle_text(files: Mapping[str, str]) -> str:
    """Files as one text, each after a ``// ---- <file>`` line (schema first)."""
    names = sorted(files, key=lambda n: (n != _SCHEMA, n != "base.cedar", n))
    parts = []
    for name in names:
        text = files[name]
        parts.append(f"// ---- {name}\n{text}" + ("" if text.endswith("\n") else "\n"))
    return "".join(parts)


def parse_bundle_text(
    text: str, *, active: Mapping[str, str], replace_all: bool = False
) -> dict[str, str]:
    """A candidate's files from its text, completed from the set in force.

    ``text`` is either the files each after a ``// ---- <file>`` line (the name one of
    ``schema.cedarschema``, ``base.cedar``, ``overrides/<name>.cedar``), or, with no such
    line, the text of ``base.cedar`` alone. A file left out, or given empty, is taken
    from ``active`` unless ``replace_all`` (then only the schema is, if left out).

    Raises:
        CandidateError: too long, text before the first file line, or a file twice.
    """
    if len(text) > MAX_CANDIDATE_CHARS:
        raise CandidateError(
            f"the candidate is {len(text)} characters; the limit is {MAX_CANDIDATE_CHARS}"
        )
    text = text.replace("\r\n", "\n")
    headers = list(_HEADER.finditer(text))
    given: dict[str, str] = {}
    if not headers:
        if text.strip():
            given["base.cedar"] = text
    else:
        if text[: headers[0].start()].strip():
            raise CandidateError(
                "text before the first '// ---- <file>' line; start with a file line such as "
                "'// ---- base.cedar'"
            )
        for i, m in enumerate(headers):
            end = headers[i + 1].start() if i + 1 < len(headers) else len(text)
            name = m.group(1)
            if name in given:
                raise CandidateError(f"{name} appears twice")
            body = text[m.end() + 1 : end] if m.end() < len(text) else ""
            if body.strip():
                given[name] = body
    if not given:
        raise CandidateError("the candidate is empty")
    if replace_all:
        base = {_SCHEMA: active[_SCHEMA]} if _SCHEMA in active else {}
    else:
        base = dict(active)
    merged = {**base, **given}
    if len(merged) > MAX_FILES:
        raise CandidateError(f"a policy set has at most {MAX_FILES} files")
    return merged


@dataclass(frozen=True)
class CandidateCheck:
    """A candidate policy set, checked: its version if valid, else the problems.

    ``changed`` names the files that differ from the set in force (added, changed or
    dropped).
    """

    valid: bool
    version: str | None
    files: tuple[str, ...]
    problems: tuple[str, ...]
    changed: tuple[str, ...]
    text: str


def check_candidate(
    files: Mapping[str, str], directory: DirectoryService, active: Mapping[str, str]
) -> CandidateCheck:
    """Load ``files`` exactly as ``POST /v1/policy/validate`` does (parse, lint, schema,
    an engine over the live directory). Never adopts it and changes nothing.

    Raises:
        CandidateError: a file name outside the bundle layout, or a file too long.
    """
    for name, text in files.items():
        if len(text) > MAX_POLICY_FILE_CHARS:
            raise CandidateError(f"{name} is longer than {MAX_POLICY_FILE_CHARS} characters")
    try:
        bundle, _engine, problems = load_candidate(dict(files), directory)
    except ApiProblem as exc:  # a file name outside the layout
        raise CandidateError(exc.detail) from exc
    changed = tuple(sorted(n for n in set(files) | set(active) if files.get(n) != active.get(n)))
    return CandidateCheck(
        valid=bundle is not None,
        version=bundle.version if bundle is not None else None,
        files=tuple(sorted(files)),
        problems=tuple(problems),
        changed=changed,
        text=bundle_text(files),
    )


@dataclass(frozen=True)
class SimulatedChange:
    """One decision the candidate would change: who, on which bulletin (by its labels),
    and the deciding policies before and after."""

    bulletin_id: str
    originator: str
    topic: str
    classification: str
    rel_to: tuple[str, ...]
    agency: str
    action: str
    gains: bool
    old_policy_ids: tuple[str, ...]
    new_policy_ids: tuple[str, ...]


@dataclass(frozen=True)
class Simulation:
    """The latest ``bulletins`` replayed under the set in force and the candidate."""

    active: str
    candidate: str
    bulletins: int
    changes: tuple[SimulatedChange, ...]

    @property
    def by_agency(self) -> list[tuple[str, int, int]]:
        """(agency, bulletins it would gain, bulletins it would lose), by agency."""
        tally: dict[str, list[int]] = {}
        for c in self.changes:
            t = tally.setdefault(c.agency, [0, 0])
            t[0 if c.gains else 1] += 1
        return [(a, g, lost) for a, (g, lost) in sorted(tally.items())]


def simulate_candidate(
    files: Mapping[str, str],
    registry: Registry,
    directory: DirectoryService,
    *,
    last: int,
    now: int | None = None,
) -> Simulation:
    """Replay the latest ``last`` bulletin headers under the set in force and the
    candidate, as ``POST /v1/policy/simulate`` does, and list who gains or loses access.

    Raises:
        CandidateError: the candidate is not a valid policy set (the problems joined).
    """
    try:
        bundle, engine, problems = load_candidate(dict(files), directory)
    except ApiProblem as exc:
        raise CandidateError(exc.detail) from exc
    if bundle is None or engine is None:
        raise CandidateError("; ".join(problems)[:500])
    cases = simulation_cases(registry, directory, last)
    labels = {facts.bulletin_id: facts for facts, _ in cases}
    when = int(time.time()) if now is None else now
    out = []
    for c in simulate(directory.engine, engine, cases, when):
        facts = labels[c.bulletin_id]
        out.append(
            SimulatedChange(
                bulletin_id=c.bulletin_id,
                originator=facts.originator,
                topic=facts.labels.topic,
                classification=facts.labels.classification.value,
                rel_to=tuple(facts.labels.rel_to),
                agency=c.agency,
                action=c.action,
                gains=c.new.allowed and not c.old.allowed,
                old_policy_ids=c.old.policy_ids,
                new_policy_ids=c.new.policy_ids,
            )
        )
    return Simulation(directory.bundle.version, bundle.version, len(cases), tuple(out))


def _schema_digest(bundle: PolicyBundle) -> str | None:
    m = re.match(r"// ---- schema\.cedarschema sha256:([0-9a-f]{64})\n", bundle.text)
    return m.group(1) if m else None


def active_schema_text(directory: DirectoryService, registry: Registry) -> str | None:
    """The text of the schema in force, found where the stack keeps policy sets (the
    adopted set's archive in the data directory, the checkout's ``policies/``) and
    accepted only if its SHA-256 is the one the bundle in force records. None if no copy
    matches (a candidate must then bring its own schema)."""
    bundle = directory.bundle
    digest = _schema_digest(bundle)
    if digest is None:
        return None
    places: list[Path] = []
    if registry.broker_dir is not None:  # the data directory's broker/ (None on PostgreSQL)
        places.append(registry.broker_dir.parent / "policies" / bundle.version)
    places.append(default_policy_dir())
    for root in places:
        try:
            raw = (root / _SCHEMA).read_bytes()
        except OSError:
            continue
        if len(raw) <= MAX_POLICY_FILE_CHARS and hashlib.sha256(raw).hexdigest() == digest:
            return raw.decode("utf-8", "replace")
    return None


def active_files(directory: DirectoryService, registry: Registry) -> dict[str, str]:
    """The set in force as files: its policy files from the canonical text, and the
    schema's text when a copy of it can be found (``active_schema_text``)."""
    files = bundle_files(directory.bundle)
    schema = active_schema_text(directory, registry)
    if schema is not None:
        files[_SCHEMA] = schema
    return files
