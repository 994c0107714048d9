"""What an analyst writes at the desk before it is sent: the form's fields checked into a
``DraftContent``, and the drafts kept sealed in the agency's archive file (ADR 27).

The pure half (``check_compose``, ``parse_multipart``) takes the form as (name, value)
pairs and answers a ``DraftContent`` or a ``FormErrors`` naming each bad field with what
to give instead: every field is checked against its closed set (topics, classifications,
TLP levels, precedences, handling codes) or its pattern (state and community codes,
agency ids), and bounded. Nothing here talks to the broker.

The shell half (``DeskDrafts``) keeps drafts beside the bulletins, in ``desk_drafts`` and
``desk_draft_files``: their title, text, labels and files sealed with AES-256-GCM under
``Archive.subkey("desk-drafts")``, each sealed value bound to its draft id and part (the
archive's ``seal_row``), so nothing a drafter wrote is in clear on disk; in clear are only
the draft's id, kind, author, times, state, the bulletin it answers and the one it became.
A draft is released once: ``claim`` moves it from ``draft`` to ``releasing`` in one
statement, only for a releaser who did not write it (four-eyes), so two releasers pressing
the button at once send it once.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal, get_args

from pydantic import ValidationError

from clients.archive_keys import open_row, seal_row
from clients.conversations import check_due, split_addressees
from clients.desk_people import open_desk_tables
from clients.desk_strings import translator
from schemas.envelope import MAX_TITLE_CHARS
from schemas.errors import ConfigError, IstmoError
from schemas.ids import AGENCY_ID_PATTERN, JURISDICTION_PATTERN
from schemas.labels import TOPICS, Classification, Handling, Labels, Precedence, Tlp

__all__ = [
    "KINDS",
    "MAX_FILES",
    "MAX_FILE_BYTES",
    "MAX_TEXT",
    "DeskDrafts",
    "Draft",
    "DraftContent",
    "DraftFile",
    "FormErrors",
    "check_compose",
    "parse_multipart",
    "sent_labels",
]

Kind = Literal["bulletin", "reply", "rfi"]
KINDS: Final[tuple[str, ...]] = get_args(Kind)
MAX_TEXT: Final = 100_000  # characters: a long bulletin; the envelope allows more
MAX_FILES: Final = 4
MAX_FILE_BYTES: Final = 4 * 1024 * 1024
MAX_FIELD_CHARS: Final = 2000  # a field other than the text
MAX_BODY_BYTES: Final = MAX_FILES * MAX_FILE_BYTES + 4 * MAX_TEXT + 64 * 1024
_AGENCY = re.compile(AGENCY_ID_PATTERN)
_JURISDICTION = re.compile(JURISDICTION_PATTERN)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_FILE_NAME = re.compile(r"^[^/\\\x00-\x1f\x7f]{1,200}$")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS desk_drafts (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    author TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    in_reply_to TEXT,
    state TEXT NOT NULL DEFAULT 'draft',
    decided_by TEXT,
    decided_at INTEGER,
    sent_id TEXT,
    sealed BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS desk_drafts_state ON desk_drafts (state, created_at);
CREATE TABLE IF NOT EXISTS desk_draft_files (
    draft TEXT NOT NULL,
    idx INTEGER NOT NULL,
    sealed BLOB NOT NULL,
    PRIMARY KEY (draft, idx)
);
"""


class Why(str):
    """What to give instead of a bad field: the English text (it is a ``str``), and the
    catalogue key and values the desk shows it by in the analyst's language."""

    key: str
    values: dict[str, object]

    def __new__(cls, key: str, **values: object) -> Why:
        made = super().__new__(cls, translator("en")(f"compose.err.{key}", **values))
        made.key, made.values = f"compose.err.{key}", values
        return made


class FormErrors(Exception):
    """The form's bad fields: field name -> what to give instead (shown beside it)."""

    def __init__(self, errors: dict[str, Why]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


@dataclass(frozen=True)
class DraftFile:
    """A file that goes with a draft: its name, media type and bytes (in memory)."""

    name: str
    media_type: str
    data: bytes = field(repr=False)

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class DraftContent:
    """What is sent when the draft is released: a bulletin, a reply or a request."""

    kind: str
    title: str
    text: str
    labels: Labels
    in_reply_to: str | None = None
    to: tuple[str, ...] = ()  # an RFI's addressees: agencies, states, communities
    due_at: int | None = None  # an RFI's deadline; None: its precedence's default
    reply_all: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "title": self.title,
            "text": self.text,
            "labels": self.labels.model_dump(mode="json", exclude_none=True),
            "in_reply_to": self.in_reply_to,
            "to": list(self.to),
            "due_at": self.due_at,
            "reply_all": self.reply_all,
        }

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> DraftContent:
        labels = Labels.model_validate_json(json.dumps(doc["labels"]))
        return cls(
            kind=str(doc["kind"]),
            title=str(doc["title"]),
            text=str(doc["text"]),
            labels=labels,
            in_reply_to=doc.get("in_reply_to"),  # type: ignore[arg-type]  # str or None
            to=tuple(doc.get("to") or ()),  # type: ignore[arg-type]  # a list of str
            due_at=doc.get("due_at"),  # type: ignore[arg-type]  # int or None
            reply_all=bool(doc.get("reply_all")),
        )


def sent_labels(c: DraftContent) -> Labels:
    """The labels the bulletin will carry: an RFI's name its agencies and are releasable
    to its states and communities (as ``IstmoClient.rfi`` makes them)."""
    if c.kind != "rfi":
        return c.labels
    agencies, codes = split_addressees(c.to)
    return c.labels.model_copy(
        update={
            "named": tuple(sorted(set(c.labels.named) | set(agencies))),
            "rel_to": tuple(dict.fromkeys((*c.labels.rel_to, *codes))),
        }
    )


# ---------------------------------------------------------------------- pure: the form
def _one(pairs: Sequence[tuple[str, str]], name: str) -> str:
    for k, v in pairs:
        if k == name:
            return v
    return ""


def _all(pairs: Sequence[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in pairs if k == name]


def _codes(text: str) -> list[str]:
    return [v for v in re.split(r"[\s,;]+", text.strip()) if v]


def _due(text: str, *, now: int) -> int:
    """A deadline from the form's ``datetime-local`` value (UTC), checked."""
    try:
        at = datetime.strptime(text.strip()[:16], "%Y-%m-%dT%H:%M").replace(tzinfo=UTC)
    except ValueError as exc:
        raise ValueError("give a date and time in UTC, like 2026-12-06T18:00") from exc
    due = int(at.timestamp())
    try:
        check_due(due, now=now)
    except IstmoError as exc:
        raise ValueError(str(exc).replace(", like --due 2h", "")) from exc
    return due


def _why(exc: Exception) -> Why:
    """A checker's refusal: our own ``Why`` as it is, another message (the SDK's, in
    English) shown as it came."""
    said = exc.args[0] if exc.args else str(exc)
    return said if isinstance(said, Why) else Why("detail", why=str(exc))


def check_compose(
    pairs: Sequence[tuple[str, str]], *, kind: str, now: int, in_reply_to: str | None = None
) -> DraftContent:
    """The compose form's fields checked into what a draft holds.

    Raises:
        FormErrors: every field that is missing, outside its closed set or too long,
            with what to give instead.
    """
    if kind not in KINDS:
        raise ValueError(f"no kind {kind!r}")
    errors: dict[str, Why] = {}
    title = _one(pairs, "title").strip()
    text = _one(pairs, "text").replace("\r\n", "\n")
    if not title:
        errors["title"] = Why("title_missing")
    elif len(title) > MAX_TITLE_CHARS or _CONTROL.search(title) or "\n" in title:
        errors["title"] = Why("title_long", max=MAX_TITLE_CHARS)
    if len(text) > MAX_TEXT:
        errors["text"] = Why("text_long", max=MAX_TEXT)
    elif _CONTROL.search(text):
        errors["text"] = Why("text_control")

    def choice(name: str, allowed: Sequence[str], default: str = "") -> str:
        value = _one(pairs, name) or default
        if value not in allowed:
            errors[name] = Why(f"choose_{name}", allowed=", ".join(allowed))
        return value

    topic = choice("topic", TOPICS)
    classification = choice("classification", [c.value for c in Classification])
    tlp = choice("tlp", [t.value for t in Tlp])
    precedence = choice("precedence", [p.value for p in Precedence], Precedence.ROUTINE.value)
    rel_to_text = _one(pairs, "rel_to")
    rel_to = _codes(rel_to_text)
    if len(rel_to_text) > MAX_FIELD_CHARS or len(rel_to) > 64:
        errors["rel_to"] = Why("rel_to_many", max=64)
    elif not rel_to:
        errors["rel_to"] = Why("rel_to_none")
    elif bad := [c for c in rel_to if not _JURISDICTION.fullmatch(c)]:
        errors["rel_to"] = Why("rel_to_bad", code=repr(bad[0][:20]))
    elif len(set(rel_to)) != len(rel_to):
        errors["rel_to"] = Why("rel_to_twice")
    handling = _all(pairs, "handling")
    codes = [h.value for h in Handling]
    note = _one(pairs, "handling_note").strip()
    if any(h not in codes for h in handling) or len(set(handling)) != len(handling):
        errors["handling"] = Why("handling_bad", codes=", ".join(codes))
    elif Handling.H3.value in handling and not note:
        errors["handling_note"] = Why("note_missing")
    if len(note) > 500:
        errors["handling_note"] = Why("note_long", max=500)
    elif note and Handling.H3.value not in handling:
        errors["handling_note"] = Why("note_without_h3")
    named_text = _one(pairs, "named")
    named = [v.lower() for v in _codes(named_text)]
    if len(named_text) > MAX_FIELD_CHARS or len(named) > 64:
        errors["named"] = Why("named_many", max=64)
    elif bad := [a for a in named if not _AGENCY.fullmatch(a)]:
        errors["named"] = Why("named_bad", id=repr(bad[0][:40]))
    to: tuple[str, ...] = ()
    due_at = None
    if kind == "rfi":
        to_text = _one(pairs, "to")
        try:
            if len(to_text) > MAX_FIELD_CHARS:
                raise ValueError(Why("to_many", max=64))
            agencies, states = split_addressees(_codes(to_text))
            to = (*agencies, *states)
        except (IstmoError, ValueError) as exc:
            errors["to"] = _why(exc)
        if due_text := _one(pairs, "due").strip():
            try:
                due_at = _due(due_text, now=now)
            except ValueError as exc:
                errors["due"] = _why(exc)
    labels = None
    if not errors:
        raw = {
            "topic": topic,
            "classification": classification,
            "tlp": tlp,
            "rel_to": rel_to,
            "handling": handling,
            "precedence": precedence,
            "named": sorted(set(named)),
            **({"handling_note": note} if note else {}),
        }
        try:
            labels = Labels.model_validate_json(json.dumps(raw))
        except ValidationError as exc:
            first = exc.errors(include_input=False, include_url=False)[0]
            where = str(first["loc"][0]) if first["loc"] else "labels"
            errors[where] = Why("not_allowed", why=first["msg"])
    if errors or labels is None:
        raise FormErrors(errors)
    return DraftContent(
        kind=kind,
        title=title,
        text=text,
        labels=labels,
        in_reply_to=in_reply_to,
        to=to,
        due_at=due_at,
        reply_all=_one(pairs, "reply_all") == "1",
    )


def _params(header: str) -> tuple[str, dict[str, str]]:
    """A header's value and its ``; name="value"`` parameters (names lower-cased)."""
    head, _, rest = header.partition(";")
    found = {}
    # Browsers send a quote in a name as %22 and a backslash as is (HTML's form encoding).
    for m in re.finditer(r'\s*([A-Za-z0-9_*-]+)\s*=\s*("[^"]*"|[^;]*)\s*;?', rest):
        value = m.group(2).strip()
        found[m.group(1).lower()] = value[1:-1] if value.startswith('"') else value
    return head.strip().lower(), found


def parse_multipart(
    body: bytes, content_type: str
) -> tuple[list[tuple[str, str]], list[DraftFile]]:
    """A ``multipart/form-data`` body, held in memory, as its fields and files.

    At most 48 fields of ``MAX_FIELD_CHARS`` (the text ``MAX_TEXT``) and ``MAX_FILES``
    files of ``MAX_FILE_BYTES``; a file input left empty is no file. Names are plain file
    names (no folders or control characters); the media type is the one the browser
    gave if it is ``type/subtype``, else ``application/octet-stream``.

    Raises:
        ValueError: not multipart, over a bound, or malformed (what to do, in words).
    """
    kind, params = _params(content_type)
    boundary = params.get("boundary", "")
    if kind != "multipart/form-data" or not 1 <= len(boundary) <= 70:
        raise ValueError("the form must be sent as multipart/form-data")
    delimiter = b"--" + boundary.encode("latin-1")
    pieces = body.split(delimiter)
    if len(pieces) < 2 or not pieces[-1].startswith(b"--"):
        raise ValueError("the form is cut short: send it again")
    fields: list[tuple[str, str]] = []
    files: list[DraftFile] = []
    for piece in pieces[1:-1]:
        if not piece.startswith(b"\r\n") or not piece.endswith(b"\r\n"):
            raise ValueError("the form is malformed")
        head, sep, data = piece[2:-2].partition(b"\r\n\r\n")
        if not sep or len(head) > 2048:
            raise ValueError("the form is malformed")
        headers = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        disposition, dp = _params(headers.get("content-disposition", ""))
        if disposition != "form-data" or "name" not in dp:
            raise ValueError("the form is malformed")
        if "filename" in dp:
            if not dp["filename"] and not data:
                continue  # a file input left empty
            if len(files) == MAX_FILES:
                raise ValueError(f"at most {MAX_FILES} files")
            if len(data) > MAX_FILE_BYTES:
                raise ValueError(f"a file is at most {MAX_FILE_BYTES // (1024 * 1024)} MiB")
            fname = dp["filename"].rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
            if not _FILE_NAME.fullmatch(fname) or fname in (".", ".."):
                raise ValueError("a file needs a plain name: rename it and attach it again")
            media = headers.get("content-type", "").split(";")[0].strip().lower()
            if not re.fullmatch(r"[a-z0-9][a-z0-9.+-]{0,62}/[a-z0-9][a-z0-9.+-]{0,62}", media):
                media = "application/octet-stream"
            files.append(DraftFile(fname, media, data))
            continue
        if len(fields) == 48:
            raise ValueError("the form has too many fields")
        try:
            value = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError("the form is not UTF-8") from exc
        bound = MAX_TEXT if dp["name"] == "text" else MAX_FIELD_CHARS
        if len(value) > bound:
            raise ValueError(f"the field {dp['name'][:20]} is too long")
        fields.append((dp["name"][:40], value))
    return fields, files


# ---------------------------------------------------------------------- shell: the store
@dataclass(frozen=True)
class Draft:
    """A draft's clear columns; its content and files are opened apart."""

    id: str
    kind: str
    author: str
    created_at: int
    in_reply_to: str | None
    state: str  # draft, releasing, released, discarded
    decided_by: str | None
    decided_at: int | None
    sent_id: str | None


_DRAFT_COLUMNS = "id, kind, author, created_at, in_reply_to, state, decided_by, decided_at, sent_id"


class DeskDrafts:
    """Drafts in an archive file (its own SQLite connection), sealed under ``key``.

    Args:
        path: the archive file, opened once by ``clients.archive.Archive``.
        key: ``Archive.subkey("desk-drafts")``.
    """

    def __init__(self, path: Path, key: bytes) -> None:
        self._key = key
        self._db = open_desk_tables(path, _SCHEMA)

    def close(self) -> None:
        self._db.close()

    def save(
        self,
        content: DraftContent,
        files: Sequence[DraftFile],
        *,
        author: str,
        now: int | None = None,
    ) -> str:
        """Keep a new draft, sealed; its id."""
        did = str(uuid.uuid4())
        sealed = seal_row(self._key, did, "draft", json.dumps(content.to_json()).encode())
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "INSERT INTO desk_drafts (id, kind, author, created_at, in_reply_to, sealed)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    did,
                    content.kind,
                    author,
                    int(time.time()) if now is None else now,
                    content.in_reply_to,
                    sealed,
                ),
            )
            for i, f in enumerate(files):
                head = json.dumps({"name": f.name, "media_type": f.media_type}).encode()
                plain = len(head).to_bytes(4, "big") + head + f.data
                db.execute(
                    "INSERT INTO desk_draft_files (draft, idx, sealed) VALUES (?, ?, ?)",
                    (did, i, seal_row(self._key, did, f"file-{i}", plain)),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return did

    def get(self, draft_id: str) -> Draft | None:
        row = self._db.execute(
            f"SELECT {_DRAFT_COLUMNS} FROM desk_drafts WHERE id = ?",  # noqa: S608 -- fixed columns
            (draft_id,),
        ).fetchone()
        return None if row is None else Draft(*row)

    def listed(self, *, author: str | None = None, limit: int = 100) -> list[Draft]:
        """Drafts not yet released or discarded (``author``'s only, if given), newest first."""
        cond, params = "state IN ('draft', 'releasing')", []
        if author is not None:
            cond += " AND author = ?"
            params.append(author)
        rows = self._db.execute(
            f"SELECT {_DRAFT_COLUMNS} FROM desk_drafts WHERE {cond}"  # noqa: S608 -- fixed text, parameters bound
            " ORDER BY created_at DESC, id LIMIT ?",
            [*params, max(1, min(limit, 1000))],
        )
        return [Draft(*r) for r in rows]

    def content(self, draft_id: str) -> DraftContent:
        """The draft's content, opened.

        Raises:
            ConfigError: no such draft, discarded, or its row was altered.
        """
        row = self._db.execute("SELECT sealed FROM desk_drafts WHERE id = ?", (draft_id,))
        found = row.fetchone()
        if found is None or not found[0]:
            raise ConfigError(f"draft {draft_id[:40]} holds nothing (discarded?)")
        return DraftContent.from_json(json.loads(open_row(self._key, draft_id, "draft", found[0])))

    def files(self, draft_id: str) -> list[DraftFile]:
        """The draft's files, opened, in order."""
        out = []
        rows = self._db.execute(
            "SELECT idx, sealed FROM desk_draft_files WHERE draft = ? ORDER BY idx", (draft_id,)
        )
        for idx, sealed in rows:
            plain = open_row(self._key, draft_id, f"file-{idx}", sealed)
            n = int.from_bytes(plain[:4], "big")
            head = json.loads(plain[4 : 4 + n])
            out.append(DraftFile(head["name"], head["media_type"], plain[4 + n :]))
        return out

    def claim(self, draft_id: str, releaser: str, *, now: int | None = None) -> bool:
        """Take the draft for release (``draft`` to ``releasing``); False if it is not a
        draft any more, or ``releaser`` wrote it (four-eyes)."""
        cur = self._db.execute(
            "UPDATE desk_drafts SET state = 'releasing', decided_by = ?, decided_at = ?"
            " WHERE id = ? AND state = 'draft' AND author != ?",
            (releaser, int(time.time()) if now is None else now, draft_id, releaser),
        )
        return cur.rowcount == 1

    def unclaim(self, draft_id: str) -> None:
        """Back to ``draft`` after a release that failed (nothing was sent)."""
        self._db.execute(
            "UPDATE desk_drafts SET state = 'draft', decided_by = NULL, decided_at = NULL"
            " WHERE id = ? AND state = 'releasing'",
            (draft_id,),
        )

    def released(self, draft_id: str, sent_id: str) -> None:
        """Sent as ``sent_id``: its files are dropped (they are at the broker now); its
        content stays, sealed, as the record of what was released."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "UPDATE desk_drafts SET state = 'released', sent_id = ? WHERE id = ?",
                (sent_id, draft_id),
            )
            db.execute("DELETE FROM desk_draft_files WHERE draft = ?", (draft_id,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def discard(self, draft_id: str, by: str, *, now: int | None = None) -> bool:
        """Drop a draft's content and files, keeping the row; False if it is not a draft."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            cur = db.execute(
                "UPDATE desk_drafts SET state = 'discarded', decided_by = ?, decided_at = ?,"
                " sealed = x'' WHERE id = ? AND state = 'draft'",
                (by, int(time.time()) if now is None else now, draft_id),
            )
            if cur.rowcount == 1:
                db.execute("DELETE FROM desk_draft_files WHERE draft = ?", (draft_id,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return cur.rowcount == 1
