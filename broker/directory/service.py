"""The directory as the broker holds it: rows in the registry, a policy snapshot, and
signed excerpts for clients.

The policy engine keeps a parsed snapshot of the directory; ``DirectoryService.refresh``
rebuilds it (and the records clients see) whenever the registry changes.

Its version (``schemas.directory.directory_version``) is the record serial of the rows it
was built from, then a digest of them. The serial is read before and after the rows
(``broker.store.journal``): if a change committed in between, the rows are read again, so
the records of a version are never older than its serial says. With it comes the end of the
change journal (``broker.directory.changes``), which answers a client's "what changed since
the version I hold?" (ADR 14).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.directory.changes import JOURNAL_TAIL, ChangeLog
from broker.directory.excerpts import Excerpts
from broker.directory.jurisdictions import PARTNER
from broker.policy.engine import (
    AgencyInfo,
    DirectorySnapshot,
    JurisdictionInfo,
    PolicyBundle,
    PolicyEngine,
)
from broker.policy.lint import shorten_error
from broker.store.registry import (
    AgencyRow,
    AgencyValues,
    EncryptionKeyValues,
    JurisdictionRow,
    Registry,
    SigningKeyValues,
    SubscriptionRow,
)
from schemas.directory import (
    AgencyRecord,
    DirectoryChanges,
    EncryptionKeyRecord,
    SignedChanges,
    SignedExcerpt,
    SigningKeyRecord,
    directory_version,
    record_bytes,
    sign_changes,
)
from schemas.errors import ConfigError
from schemas.keys import SigningKey
from schemas.labels import TOPICS, Classification

__all__ = [
    "PARSE_AFTER_S",
    "DemoDirectory",
    "DirectoryService",
    "load_demo_directory",
    "settle_heap",
]

log = logging.getLogger(__name__)

# Seconds after a directory change is swapped in before the whole directory is parsed
# for Cedar (``DirectoryService.refresh_async``): past the burst a change comes in (an
# addition, the enrolment, a suspension; every process of the stack rebuilding at once).
PARSE_AFTER_S = 5.0

# Reads of the rows while changes keep committing, before a rebuild settles for the serial
# read first (its records are then newer than the serial says: a client asks again sooner).
_STABLE_READS = 3


@dataclass(frozen=True)
class DemoDirectory:
    jurisdictions: tuple[JurisdictionRow, ...]
    agencies: tuple[AgencyRow, ...]
    subscriptions: tuple[SubscriptionRow, ...]


def load_demo_directory(policy_dir: Path) -> DemoDirectory:
    """Expand ``policies/directory.json`` into registry rows.

    Raises:
        ConfigError: the file is missing or names an unknown sector, clearance or topic.
    """
    path = policy_dir / "directory.json"
    try:
        spec: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the demo directory {path}: {exc}") from exc
    jur: list[JurisdictionRow] = []
    agencies: list[AgencyRow] = []
    subs: list[SubscriptionRow] = []
    for code, c in sorted(spec["communities"].items()):
        jur.append(JurisdictionRow(code=code, kind="community", name=c["name"]))
    for code, s in sorted(spec["states"].items()):
        jur.append(
            JurisdictionRow(
                code=code, kind="state", name=s["name"], parents=",".join(s["communities"])
            )
        )
        for sector, sec in spec["sectors"].items():
            if sector == "military" and "no_military" in s:
                continue
            aid = f"{code.lower()}-{sector}"
            agencies.append(
                AgencyRow(
                    id=aid,
                    name=f"{s['name']}: {sec['label']}",
                    sector=sector,
                    clearance=Classification(sec["clearance"]).level,
                    state=code,
                )
            )
            subs.extend(SubscriptionRow(agency=aid, topic=_topic(t)) for t in sec["topics"])
    for r in spec["regional"]:
        topics = TOPICS if r["topics"] == "all" else [_topic(t) for t in r["topics"]]
        agencies.append(
            AgencyRow(
                id=r["id"],
                name=r["name"],
                sector=r["sector"],
                clearance=Classification(r["clearance"]).level,
                communities=",".join(r["communities"]),
                min_source_grade=r.get("min_source_grade"),
            )
        )
        subs.extend(SubscriptionRow(agency=r["id"], topic=t) for t in topics)
    return DemoDirectory(tuple(jur), tuple(agencies), tuple(subs))


def _topic(name: str) -> str:
    if name not in TOPICS:
        raise ConfigError(f"directory.json names an unknown topic {name!r}")
    return name


class _Deferral:
    """The builds under way that hold off the cyclic garbage collector, on any thread of
    the process, and whether the first of them found it on."""

    lock = threading.Lock()
    builds = 0
    was_enabled = False


@contextlib.contextmanager
def _collections_deferred() -> Iterator[None]:
    """Hold off Python's cyclic garbage collector while a view is built: a rebuild makes
    tens of thousands of objects, and each full collection it sets off walks the whole heap
    of a long-running relay or API. Measured at 3,500 agencies: a rebuild in 0.52 s
    instead of 0.76-0.85 s. The view's objects are freed by reference counting as ever;
    what cycles there are wait for the next collection after it."""
    with _Deferral.lock:
        _Deferral.builds += 1
        if _Deferral.builds == 1:
            _Deferral.was_enabled = gc.isenabled()
            gc.disable()
    try:
        yield
    finally:
        with _Deferral.lock:
            _Deferral.builds -= 1
            if _Deferral.builds == 0 and _Deferral.was_enabled:
                gc.enable()


def settle_heap() -> None:
    """Collect every unreachable object, cycles included, then freeze what is left
    (``gc.freeze``): the collector's full passes then walk only what was made since.

    A long-running relay or API holds the directory's view, its policy engine and the
    libraries' own objects, hundreds of thousands of them at 3,500 agencies; every full
    pass walked them all (100-185 ms each at that size, one of them in the middle of a
    relay's drain of 2,000 bulletins), with every bulletin in flight waiting (ADR 41).
    Frozen objects are still freed when nothing refers to them; only a cycle among them
    would outlive its use, so the frozen ones are thawed and collected first: the view a
    rebuild replaced goes then, whole. Skipped while a build holds the collector off
    (``_collections_deferred``): the rebuild that follows settles it."""
    with _Deferral.lock:
        if _Deferral.builds or not gc.isenabled():
            return
        gc.unfreeze()
        gc.collect()
        gc.freeze()


def _split(value: str) -> tuple[str, ...]:
    return tuple(v for v in value.split(",") if v)


def _record(
    a: AgencyValues,
    signing_rows: Sequence[SigningKeyValues],
    encryption_rows: Sequence[EncryptionKeyValues],
) -> AgencyRecord:
    signing = [
        SigningKeyRecord(
            kid=k.kid, public=k.public, created_at=k.created_at, revoked_at=k.revoked_at
        )
        for k in sorted(signing_rows, key=lambda k: k.created_at)
    ]
    current = [k for k in encryption_rows if k.current]
    enc = None
    if current:
        k = max(current, key=lambda k: k.created_at)
        enc = EncryptionKeyRecord(kid=k.kid, kem=k.kem, public=k.public, created_at=k.created_at)
    return AgencyRecord(
        id=a.id,
        name=a.name,
        state=a.state,
        communities=_split(a.communities),
        sector=a.sector,
        status=a.status,
        signing_keys=tuple(signing),
        encryption_key=enc,
    )


def _followers(subscriptions: dict[str, set[str]]) -> dict[str, list[str]]:
    """Each topic's followers, sorted (every topic of ``TOPICS``, followed or not; no
    other)."""
    out: dict[str, list[str]] = {t: [] for t in TOPICS}
    for agency, topics in subscriptions.items():
        for t in topics:
            followers = out.get(t)
            if followers is not None:
                followers.append(agency)
    for followers in out.values():
        followers.sort()
    return out


# What an agency's record is made from: its row's values, its keys' values.
_RecordKey = tuple[
    str,
    str,
    str | None,
    str,
    str,
    str,
    tuple[SigningKeyValues, ...],
    tuple[EncryptionKeyValues, ...],
]


@dataclass(frozen=True)
class _View:
    """Everything one rebuild computes, swapped in together."""

    generation: int
    jurisdictions: list[JurisdictionInfo]
    infos: list[AgencyInfo]
    states: set[str]
    agency_rows: dict[str, AgencyValues]
    subscribers: dict[str, list[str]]
    records: dict[str, AgencyRecord]
    version: str
    changes: ChangeLog
    snapshot: DirectorySnapshot
    engine: PolicyEngine
    excerpts: Excerpts  # the signed excerpts of these records (dropped with the view)


@dataclass(frozen=True)
class _Rows:
    """The registry's rows one rebuild reads."""

    serial: int
    subscriptions: dict[str, set[str]]
    jurisdictions: list[JurisdictionRow]
    agencies: list[AgencyValues]
    signing: dict[str, list[SigningKeyValues]]
    encryption: dict[str, list[EncryptionKeyValues]]


class DirectoryService:
    """A consistent view of the directory: policy engine, client records, candidates."""

    def __init__(self, registry: Registry, bundle: PolicyBundle, directory_key: SigningKey):
        self.registry = registry
        self.bundle = bundle
        self.directory_key = directory_key
        self._generation_lock = threading.Lock()
        self._generation = 0  # rebuilds started
        self._installed = 0  # the newest rebuild swapped in
        # Rebuilds are swapped in from the event loop and from the agency API's thread.
        self._install_lock = threading.Lock()
        self._view: _View | None = None
        # The records the last rebuild made, by the values they were made from. Replaced
        # whole by each rebuild; two rebuilds at once may each miss the other's.
        self._made: dict[_RecordKey, tuple[AgencyRecord, bytes]] = {}
        self._settles = False  # keep_heap_settled: after each view swapped in
        self.refresh()

    def keep_heap_settled(self) -> None:
        """For a process that runs for long (a relay, the API): ``settle_heap`` now, and
        again after every view swapped in from now on, once the one it replaced is
        unreachable. Not for a command that reads the directory once and exits: a full
        collection costs it about 0.1 s at 3,500 agencies for nothing."""
        self._settles = True
        settle_heap()

    def use_bundle(self, bundle: PolicyBundle) -> None:
        """Switch to another policy set (already validated) and rebuild the engine."""
        self.bundle = bundle
        self.refresh()

    def refresh(self) -> None:
        """Rebuild everything from the registry and swap it in at once. The whole
        directory is checked against the policy schema before (``ConfigError``)."""
        self._install(self._build(parse=True))

    async def refresh_async(self) -> None:
        """``refresh`` with the rebuild (database reads, the policy snapshot: about a
        second at 3,500 agencies) in a worker thread, so the event loop that serves the
        API and the relay keeps running; the swap happens on the loop. A rebuild that
        started before another one already swapped in is dropped, never installed over
        it.

        For a change of the directory (the policy set and its schema as before, every
        record checked as ever): the whole directory's Cedar parse, which only decisions
        over more agencies than a slice holds need (a third of a rebuild at 10,000
        agencies), is left out of the rebuild and done on a thread ``PARSE_AFTER_S``
        after the swap, if no rebuild started since: changes come in bursts (an agency
        added, enrolled, maybe suspended; every process of the stack rebuilding at
        once, on a machine of few cores), and a parse in their midst takes CPU from
        them. A decision that needs it sooner parses it (once; the others wait); if it
        fails, such decisions are refused, and the error is logged."""
        view = await asyncio.to_thread(self._build, parse=False)
        if self._install(view):
            later = threading.Timer(PARSE_AFTER_S, self._parse_if_in_force, args=(view,))
            later.name, later.daemon = "istmo-directory-parse", True
            later.start()

    def _parse_if_in_force(self, view: _View) -> None:
        """Parse ``view``'s whole directory now, unless a rebuild started since (its
        view, if swapped in, is parsed later in turn)."""
        if self._view is not view or self._generation != view.generation:
            return
        try:
            view.snapshot.entities()
        except ValueError as exc:
            log.error(
                "directory %s does not conform to the policy schema (%s): decisions over "
                "more agencies than a slice holds are refused until it is mended",
                view.version,
                shorten_error(str(exc)),
            )

    def _read(self) -> _Rows:
        """The rows of one record serial: read again while changes commit meanwhile."""
        registry = self.registry
        serial = registry.directory_serial()
        for _ in range(_STABLE_READS):
            rows = _Rows(
                serial,
                registry.subscriptions(),
                registry.jurisdictions(),
                registry.agency_values(),
                *registry.keys_by_agency(),
            )
            after = registry.directory_serial()
            if after == serial:
                break
            serial = after
        # Still moving: the rows are at least as new as the serial of the last read before
        # them, which is what the version claims (never newer than the records).
        return rows

    def _build(self, *, parse: bool) -> _View:
        with self._generation_lock:
            self._generation += 1
            generation = self._generation
        with _collections_deferred():
            return self._build_view(generation, parse=parse)

    def _build_view(self, generation: int, *, parse: bool) -> _View:
        read = self._read()
        subs = read.subscriptions
        jurisdictions = [
            JurisdictionInfo(
                code=j.code,
                # A partner region (ADR 33) is a state of its own to the policy: in no
                # community, so only a REL TO naming it covers it.
                kind="state" if j.kind in ("state", PARTNER) else "community",
                name=j.name,
                parents=_split(j.parents),
            )
            for j in read.jurisdictions
        ]
        rows = read.agencies
        signing, encryption = read.signing, read.encryption
        infos = [
            AgencyInfo(
                id=a.id,
                name=a.name,
                sector=a.sector,
                status=a.status,
                clearance=a.clearance,
                topics=frozenset(subs.get(a.id, set())),
                state=a.state,
                communities=_split(a.communities),
                min_source_grade=a.min_source_grade,
            )
            for a in rows
        ]
        bundle = self.bundle
        # What the view in force worked out for an agency is kept if its values are the same.
        previous = self._view.snapshot if self._view is not None else None
        snapshot = DirectorySnapshot.build(
            jurisdictions, infos, bundle, parse=parse, previous=previous
        )
        # Each record encoded once: the digest is canonical_json of the list of them, and
        # every excerpt of this view joins the same bytes. A record whose values are those
        # of the last rebuild is taken from it, made and encoded again only if they
        # changed (at 10,000 agencies, a third of a second a rebuild).
        made = self._made
        kept: dict[_RecordKey, tuple[AgencyRecord, bytes]] = {}
        records: dict[str, AgencyRecord] = {}
        encoded: dict[str, bytes] = {}
        for a in rows:
            sk, ek = tuple(signing.get(a.id, ())), tuple(encryption.get(a.id, ()))
            key = (a.id, a.name, a.state, a.communities, a.sector, a.status, sk, ek)
            found = made.get(key)
            if found is None:
                record = _record(a, sk, ek)
                found = (record, record_bytes(record))
            kept[key] = found
            records[a.id], encoded[a.id] = found
        self._made = kept  # only this directory's: what left it is let go
        digest = hashlib.sha256(
            b"".join((snapshot.version.encode(), b"[", b",".join(encoded.values()), b"]"))
        ).hexdigest()
        version = directory_version(read.serial, digest)
        entries, complete_after = self.registry.directory_journal(
            upto=read.serial, limit=JOURNAL_TAIL
        )
        return _View(
            generation=generation,
            jurisdictions=jurisdictions,
            infos=infos,
            states={j.code for j in jurisdictions},
            agency_rows={a.id: a for a in rows},
            subscribers=_followers(subs),
            records=records,
            version=version,
            changes=ChangeLog(read.serial, tuple(entries), complete_after),
            snapshot=snapshot,
            engine=PolicyEngine(bundle, snapshot),
            excerpts=Excerpts(version, records, encoded, self.directory_key),
        )

    def _install(self, view: _View) -> bool:
        """Swap ``view`` in, unless a newer one is in force; whether it was."""
        with self._install_lock:
            older = self._view is not None and view.changes.serial < self._view.changes.serial
            if view.generation <= self._installed or older:
                # A newer rebuild is in force already (a policy switch rebuilds too, later).
                # Never older records either: a client that saw them would refuse this
                # relay's answers as a downgrade (ADR 14).
                return False
            self._swap(view)
        if self._settles:
            settle_heap()
        return True

    def _swap(self, view: _View) -> None:
        self._installed = view.generation
        self._view = view  # one assignment: readers on other threads take one whole view
        self._jurisdictions, self._infos = view.jurisdictions, view.infos
        self.states = view.states
        self.jurisdiction_parents = {j.code: j.parents for j in view.jurisdictions}
        self.agency_rows = view.agency_rows
        self.subscribers = view.subscribers
        self.records = view.records
        self.version = view.version
        self.changes = view.changes
        self.engine = view.engine

    def _installed_view(self) -> _View:
        """The view in force: one whole rebuild, whatever swaps in meanwhile."""
        view = self._view
        if view is None:  # __init__ installs one: a bug
            raise RuntimeError("the directory was never built")
        return view

    def engine_for(self, bundle: PolicyBundle) -> PolicyEngine:
        """An engine for another policy set over the same directory (to check or
        simulate a candidate); the one in force is untouched.

        Raises:
            ConfigError: the directory does not fit the candidate's schema.
        """
        return PolicyEngine(
            bundle,
            DirectorySnapshot.build(
                self._jurisdictions,
                self._infos,
                bundle,
                previous=self._installed_view().snapshot,
            ),
        )

    def candidates(self, topic: str, named: tuple[str, ...]) -> list[str]:
        """Agencies that follow ``topic``, plus those named, that exist, sorted."""
        followers = self.subscribers.get(topic, [])  # sorted at refresh
        extra = {n for n in named if n in self.records} - set(followers) if named else ()
        return sorted({*followers, *extra}) if extra else list(followers)

    def excerpt(self, agency_ids: list[str], now: int) -> bytes:
        """The signed records of ``agency_ids`` (unknown ids are left out), encoded."""
        return self._installed_view().excerpts.sign(agency_ids, now).raw

    def signed_excerpt(self, agency_ids: list[str], now: int) -> SignedExcerpt:
        """The signed records of ``agency_ids`` (unknown ids are left out), as of ``now``."""
        return self._installed_view().excerpts.sign(agency_ids, now).signed

    def answer_excerpt(self, agency_ids: list[str], now: int) -> SignedExcerpt:
        """``signed_excerpt`` for an agency's question (``resolve``, ``directory``): the
        same records, but the excerpt of the same agencies may be one signed for an
        earlier answer in this view, at most ``EXCERPT_REUSE_S`` before ``now``
        (``broker.directory.excerpts``); ``encoded_excerpt`` has its bytes."""
        return self._installed_view().excerpts.answer(agency_ids, now).signed

    def encoded_excerpt(self, signed: SignedExcerpt) -> bytes | None:
        """The canonical encoding of ``signed``, an excerpt ``answer_excerpt`` gave in the
        view still in force and still kept, else None (encode it then)."""
        return self._installed_view().excerpts.encoded(signed)

    def signed_changes(self, since: str, now: int) -> SignedChanges:
        """Which agencies' records changed since version ``since``, up to this view's
        version, signed (``broker.directory.changes.ChangeLog.changed_since``)."""
        view = self._installed_view()
        answer = DirectoryChanges(
            v=1,
            since=since,
            directory_version=view.version,
            issued_at=now,
            changed=view.changes.changed_since(since),
        )
        return sign_changes(answer, self.directory_key)
