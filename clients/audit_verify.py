"""Verify and monitor an Istmo audit log from its HTTP API alone, on the auditor's machine.

``istmo audit verify --from-url URL --as AUDITOR`` trusts nothing the server says without a
check: the log key (compared with a pinned ``log.pub`` when ``--log-key`` is given), every
signed tree head (signature under that key, for the log's origin), every entry (its leaf hash
is the hash of the bytes served, and those bytes are a canonical audit event), the root of
the tree rebuilt from the entries at every signed size, inclusion proofs of a sample of
entries, and consistency proofs from a sample of earlier heads to the latest one.

When a signed root does not match the entries, consistency proofs from the log's own store
place the change: the first entry whose prefix no longer extends to the signed root. An
entry edited in the database is named by its index; a careful attacker who also recomputed
the stored nodes is caught at the start of the first head range that no longer matches.

``istmo audit monitor --from-url URL --as AUDITOR --state FILE`` does what the local monitor
does, over HTTP: pin the key and the latest head on the first run; afterwards verify the
new head's signature, refuse a rollback or a split view (``check_monotonic``), and check a
consistency proof from the head seen last. An alarm keeps both signed heads as evidence in
the state file (the same format as the local monitor's) and exits 3 on every run after.

Exit codes: 0 fine; 1 an error, or ``verify`` found the log altered (one line naming the
first bad index); 3 ``monitor`` raised an alarm.

Uses only ``schemas`` and ``clients``: an auditor installs the client, not the broker.
Every request is itself an ``audit.queried`` entry on the server (the log grows a little
with each run).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import httpx
from pydantic import ValidationError

from clients.keystore import load_keystore, passphrase_from_env, resolve_keystore_path
from clients.oauth import ApiError, IstmoHttp, TokenRefused
from schemas.audit import AuditEvent
from schemas.canonical import b64d, b64e
from schemas.errors import ConfigError, EnvelopeError, IstmoError, SignatureError
from schemas.keys import VerifyKey
from schemas.keystore import KeystoreFile
from schemas.merkle_verify import (
    ProofError,
    TreeBuilder,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from schemas.monitor import Findings, MonitorState
from schemas.treehead import (
    SignedTreeHead,
    TreeHeadConflict,
    check_monotonic,
    parse_signed_tree_head,
    verify_tree_head,
)

__all__ = [
    "ALARM_EXIT",
    "DEFAULT_ORIGIN",
    "DEFAULT_SAMPLE",
    "AuditApi",
    "LogAltered",
    "MonitorState",
    "RemoteLogError",
    "RemoteReport",
    "add_remote_audit_parsers",
    "monitor_command",
    "monitor_remote",
    "read_log_key",
    "verify_command",
    "verify_remote",
]

ALARM_EXIT = 3
DEFAULT_ORIGIN = "istmo.local/audit"  # the log's name in its tree heads (broker.audit.sequencer)
DEFAULT_SAMPLE = 32  # inclusion proofs, and consistency proofs from earlier heads
PAGE = 1000  # entries and heads per request: the API's cap
MAX_LEAF_BYTES = 64 * 1024
_MAX_RETRIES = 8  # on 429, each after Retry-After (at most _MAX_WAIT_S)
_MAX_WAIT_S = 10.0


class LogAltered(IstmoError):
    """The log served contradicts its own signed tree heads or the pinned key."""

    default_code = "log_corrupt"


class RemoteLogError(IstmoError):
    """The server's answer is not what the audit API serves (malformed, or missing)."""

    default_code = "bad_answer"


def read_log_key(path: Path) -> VerifyKey:
    """The log's public key from a ``log.pub`` file (base64 of 32 bytes, one line).

    Raises:
        ConfigError: unreadable or not an Ed25519 public key.
    """
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the log key {path}") from exc
    try:
        return VerifyKey(b64d(text, field="--log-key", max_bytes=32))
    except EnvelopeError as exc:
        raise ConfigError(f"{path} is not a log key: {exc}") from exc


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _hash(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise RemoteLogError(f"the server sent no {what}")
    try:
        return b64d(text, field=what, max_bytes=32)
    except EnvelopeError as exc:
        raise RemoteLogError(f"the server sent a malformed {what}") from exc


def _canonical(value: Any) -> bytes | None:
    """``schemas.canonical.canonical_json`` for a value ``json.loads`` made, or None.

    The same encoding without its walk over the value: an audit event has already passed
    the strict model, and a value that re-encodes to the exact bytes served (sorted keys, no
    white space, UTF-8, one of each key) is canonical. Lone surrogates fail to encode.
    """
    try:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
        return text.encode("utf-8")
    except ValueError:  # UnicodeEncodeError included
        return None


# ---------------------------------------------------------------------------- the API
class AuditApi:
    """The audit endpoints, as the auditor's token allows; waits out rate limits."""

    def __init__(self, http: IstmoHttp) -> None:
        self.http = http
        self.base_url = http.base_url

    async def _get(self, path: str, params: dict[str, Any] | None = None) -> httpx.Response:
        for _ in range(_MAX_RETRIES):
            try:
                response = await self.http.request("GET", path, params=params)
            except TokenRefused as exc:
                if exc.code != "invalid_scope":
                    raise
                raise TokenRefused(
                    f"{exc}: reading the audit log needs an auditor's keystore (scope audit:read)",
                    code=exc.code,
                    status=exc.status,
                ) from exc
            if response.status_code != 429:
                return response
            try:
                wait = float(response.headers.get("Retry-After", "1"))
            except ValueError:
                wait = 1.0
            await asyncio.sleep(min(max(wait, 0.1), _MAX_WAIT_S))
        return response

    async def json(self, path: str, **params: Any) -> Any:
        """GET ``path``: the JSON body of a 200, ``ApiError`` otherwise."""
        response = await self._get(path, params or None)
        try:
            return IstmoHttp._json(response)  # ApiError unless 200
        except ValueError as exc:
            raise RemoteLogError(f"the answer to {path} is not JSON") from exc

    async def raw(self, path: str) -> bytes | None:
        """GET ``path``: the body of a 200 as bytes, None on 404, ``ApiError`` otherwise."""
        response = await self._get(path)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            IstmoHttp._json(response)  # raises the problem as ApiError
        return response.content

    async def log_key(self) -> tuple[VerifyKey, str]:
        """The key the server names, and the log's origin."""
        body = await self.json("/v1/audit/log-key")
        try:
            key = VerifyKey(b64d(str(body["public"]), field="log key", max_bytes=32))
            kid, origin = str(body["kid"]), str(body["origin"])
        except (KeyError, TypeError, EnvelopeError) as exc:
            raise RemoteLogError("the server's log key is malformed") from exc
        if key.kid != kid:
            raise RemoteLogError(f"the server's log key is not the key {kid[:40]} it names")
        return key, origin

    async def latest_head(self) -> bytes | None:
        return await self.raw("/v1/audit/tree-heads/latest")

    async def heads(self, up_to: int) -> list[SignedTreeHead]:
        """Every signed head up to size ``up_to``, smallest first (sizes as served)."""
        out: list[SignedTreeHead] = []
        after = -1
        while True:
            body = await self.json("/v1/audit/tree-heads", after_size=after, limit=PAGE)
            try:
                docs = list(body["heads"])
                more = body["next_after_size"]
            except (KeyError, TypeError) as exc:
                raise RemoteLogError("the server's list of tree heads is malformed") from exc
            for doc in docs:
                try:
                    sth = parse_signed_tree_head(json.dumps(doc).encode())
                except EnvelopeError as exc:
                    raise RemoteLogError(f"a listed tree head is malformed: {exc}") from exc
                if sth.head.tree_size > up_to:
                    return out
                if out and sth.head.tree_size <= out[-1].head.tree_size:
                    raise RemoteLogError("the server lists tree heads out of order")
                out.append(sth)
            if more is None or not docs:
                return out
            after = out[-1].head.tree_size

    async def entries(self, after_index: int) -> list[dict[str, Any]]:
        body = await self.json("/v1/audit/entries", after_index=after_index, limit=PAGE)
        try:
            return list(body["entries"])
        except (KeyError, TypeError) as exc:
            raise RemoteLogError("the server's page of entries is malformed") from exc

    async def inclusion(self, index: int, tree_size: int) -> list[bytes]:
        body = await self.json("/v1/audit/proofs/inclusion", index=index, tree_size=tree_size)
        return _proof(body)

    async def consistency(self, old: int, new: int) -> list[bytes]:
        body = await self.json("/v1/audit/proofs/consistency", old=old, new=new)
        return _proof(body)


def _proof(body: Any) -> list[bytes]:
    hashes = body.get("proof") if isinstance(body, dict) else None
    if not isinstance(hashes, list) or len(hashes) > 128:
        raise RemoteLogError("the server sent a malformed proof")
    return [_hash(h, "proof hash") for h in hashes]


# ---------------------------------------------------------------------------- verify
@dataclass
class RemoteReport(Findings):
    """What ``verify_remote`` checked, and the first problem if any."""

    url: str = ""
    kid: str = ""
    pinned: bool = False
    inclusion: int = 0  # inclusion proofs checked
    consistency: int = 0  # consistency proofs checked


@dataclass
class _Head:
    size: int
    root: bytes | None  # None: the head itself is bad (reported already)


@dataclass
class _Verifier:
    api: AuditApi
    key: VerifyKey
    origin: str
    report: RemoteReport
    progress: Callable[[int, int], None] | None
    heads: list[_Head] = field(default_factory=list)
    next_head: int = 0
    tree: TreeBuilder = field(default_factory=TreeBuilder)
    base: TreeBuilder = field(default_factory=TreeBuilder)  # the tree at ``vouched``
    since_vouched: list[bytes] | None = field(default_factory=list)  # None: stop bisecting
    vouched: int = 0  # entries below this size match a good signed head
    wanted: dict[int, bytes | None] = field(default_factory=dict)  # sampled index -> leaf hash

    # 1. heads -------------------------------------------------------------------------
    def check_heads(self, listed: list[SignedTreeHead], latest: SignedTreeHead) -> None:
        prev = 0
        for sth in listed:
            size = sth.head.tree_size
            self.heads.append(_Head(size, self._check_head(sth, size, prev)))
            prev = size
        self.report.heads = len(listed)
        n = latest.head.tree_size
        if not listed or listed[-1].head.tree_size != n:
            self.report.add(prev, f"the latest tree head (size {n}) is missing from the list", n)
            self.heads.append(_Head(n, self._check_head(latest, n, prev)))
        elif listed[-1] != latest:
            self.report.add(
                prev,
                f"the server served two different tree heads at size {n}: a split view",
                n,
            )

    def _check_head(self, sth: SignedTreeHead, size: int, prev: int) -> bytes | None:
        try:
            head = verify_tree_head(sth, self.key, self.origin)
        except SignatureError as exc:
            self.report.add(prev, f"tree head at size {size}: {exc} (kid {sth.kid})", size)
            return None
        self.report.latest = head
        return head.root()

    # 2. entries -----------------------------------------------------------------------
    async def check_entries(self, size: int) -> None:
        await self._heads_at(0)
        expected = 0
        while expected < size:
            page = await self.api.entries(expected - 1)
            before = expected
            for doc in page:
                idx = self._index(doc)
                if idx >= size:
                    break
                if idx < expected:
                    self.report.add(idx, f"entry {idx} was served twice or out of order")
                    continue
                if idx != expected:
                    self.report.add(expected, f"entry {expected} is missing (next served: {idx})")
                    expected = idx
                leaf = self._leaf(idx, doc)
                self.tree.append(leaf)
                if self.since_vouched is not None:
                    self.since_vouched.append(leaf)
                if idx in self.wanted:
                    self.wanted[idx] = leaf
                expected += 1
                await self._heads_at(self.tree.size)
            if expected == before:
                break  # an empty page, or one that does not advance: the rest is missing
            if self.progress is not None:
                self.progress(expected, size)
        if expected < size:
            self.report.add(
                expected,
                f"entries from {expected} on are missing: the latest signed head has size {size}",
                size,
            )
        self.report.entries = self.tree.size
        for head in self.heads[self.next_head :]:
            self.report.add(
                self.tree.size,
                f"tree head at size {head.size}, but the log serves only {self.tree.size} entries",
                head.size,
            )
        if self.progress is not None:
            self.progress(expected, size)

    @staticmethod
    def _index(doc: Any) -> int:
        idx = doc.get("index") if isinstance(doc, dict) else None
        if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
            raise RemoteLogError("the server sent an entry without a valid index")
        return idx

    def _leaf(self, idx: int, doc: dict[str, Any]) -> bytes:
        """The leaf hash of the bytes served (what the tree is rebuilt from)."""
        try:
            leaf = b64d(str(doc.get("leaf")), field="leaf", max_bytes=MAX_LEAF_BYTES)
        except EnvelopeError as exc:
            raise RemoteLogError(f"entry {idx}: the server sent no leaf bytes") from exc
        h = leaf_hash(leaf)
        try:
            stored = _hash(doc.get("leaf_hash"), "leaf hash")
        except RemoteLogError:
            stored = None
        if stored != h:
            self.report.add(idx, f"entry {idx}: the stored leaf hash is not its bytes' hash")
        try:
            AuditEvent.model_validate_json(leaf)  # strict: no floats, no unknown fields
            value = json.loads(leaf)
        except (ValidationError, ValueError, RecursionError):
            self.report.add(idx, f"entry {idx} is not an audit event")
            return h
        if _canonical(value) != leaf:
            self.report.add(idx, f"entry {idx} is not canonical JSON")
        elif doc.get("entry") != value:
            self.report.add(idx, f"entry {idx}: the event served is not the one its bytes hold")
        return h

    async def _heads_at(self, size: int) -> None:
        """Check every signed head at ``size`` against the tree rebuilt so far."""
        while self.next_head < len(self.heads) and self.heads[self.next_head].size == size:
            h = self.heads[self.next_head]
            self.next_head += 1
            if h.root is None:
                continue  # a bad head, reported already: it vouches for nothing
            got = self.tree.root()
            if got == h.root:
                self.vouched = size
                self.base = self.tree.copy()
                if self.since_vouched is not None:
                    self.since_vouched = []
                continue
            await self._locate(size, h.root, got)

    async def _locate(self, size: int, signed: bytes, got: bytes) -> None:
        """The signed root at ``size`` is not the entries': find the first changed entry.

        A consistency proof from ``m`` to ``size``, built from the log's stored nodes and
        checked against the root of the first ``m`` entries served, holds exactly when
        those ``m`` entries are the ones the log signed. Bisect for the largest such ``m``.
        """
        changed = (
            f"tree head at size {size} signs root {b64e(signed)}, the entries give "
            f"{b64e(got)}: entries {self.vouched}..{size - 1} were changed"
        )
        leaves, self.since_vouched = self.since_vouched, None  # bisect the first range only
        lo, hi = self.vouched, size
        if leaves is None or (lo > 0 and not await self._extends(lo, leaves, size, signed)):
            self.report.add(lo, changed, size)  # the log's proofs cannot place it
            return
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if await self._extends(mid, leaves, size, signed):
                lo = mid
            else:
                hi = mid
        if lo == 0:  # entry 0, or proofs that place nothing: the same first index
            self.report.add(0, changed, size)
            return
        self.report.add(
            lo,
            f"entry {lo} is not the entry the log signed: {changed}; consistency proofs "
            f"from the log's store hold for the first {lo} entries and fail from entry {lo} on",
            size,
        )

    async def _extends(self, m: int, leaves: list[bytes], size: int, signed: bytes) -> bool:
        tree = self.base.copy()
        tree.extend(leaves[: m - self.vouched])
        try:
            proof = await self.api.consistency(m, size)
            verify_consistency(m, size, tree.root(), signed, proof)
        except (ProofError, RemoteLogError):
            return False
        except ApiError as exc:
            if exc.status == 400:
                return False
            raise
        return True

    # 3. proofs ------------------------------------------------------------------------
    async def check_proofs(self, latest: _Head, sample: int) -> None:
        if latest.root is None or sample <= 0:
            return
        size = latest.size
        for idx, h in sorted(self.wanted.items()):
            if h is None:
                continue  # never served: reported already
            try:
                proof = await self.api.inclusion(idx, size)
                verify_inclusion(h, idx, size, proof, latest.root)
            except (ProofError, RemoteLogError) as exc:
                # The entry matched the signed roots: the stored nodes the proof comes from
                # do not. Somewhere in idx..size-1, so it ranks after any entry problem.
                self.report.add(
                    idx,
                    f"the inclusion proof of entry {idx} in size {size} fails ({exc}): the "
                    "log's stored nodes do not match its signed root",
                    size,
                )
            except ApiError as exc:
                if exc.status != 400:
                    raise
                self.report.add(
                    idx, f"the log gives no inclusion proof of entry {idx}: {exc}", size
                )
            self.report.inclusion += 1
        good = [(h.size, h.root) for h in self.heads if h.root is not None and 0 < h.size < size]
        for old, root in _spread(good, sample):
            try:
                proof = await self.api.consistency(old, size)
                verify_consistency(old, size, root, latest.root, proof)
            except (ProofError, RemoteLogError) as exc:
                self.report.add(old, f"tree heads at sizes {old} and {size}: {exc}", size)
            except ApiError as exc:
                if exc.status != 400:
                    raise
                self.report.add(old, f"no consistency proof from size {old} to {size}: {exc}")
            self.report.consistency += 1


def _spread(items: list[Any], n: int) -> list[Any]:
    """At most ``n`` of ``items``, evenly spread, first and last included."""
    if len(items) <= n:
        return items
    if n == 1:
        return [items[-1]]
    step = (len(items) - 1) / (n - 1)
    return [items[round(i * step)] for i in range(n)]


def _sample_indices(size: int, n: int) -> list[int]:
    if size <= n:
        return list(range(size))
    picked = {0, size - 1}
    picked.update(secrets.SystemRandom().sample(range(1, size - 1), max(0, n - 2)))
    return sorted(picked)


async def _pinned_key(api: AuditApi, pinned: VerifyKey | None, origin: str) -> VerifyKey:
    served, served_origin = await api.log_key()
    if pinned is not None and served != pinned:
        raise LogAltered(
            f"the log at {api.base_url} names key {served.kid}, not the pinned {pinned.kid}"
        )
    if served_origin != origin:
        raise LogAltered(f"the log at {api.base_url} is {served_origin!r}, not {origin!r}")
    return pinned or served


async def verify_remote(
    api: AuditApi,
    *,
    pinned: VerifyKey | None,
    origin: str = DEFAULT_ORIGIN,
    sample: int = DEFAULT_SAMPLE,
    progress: Callable[[int, int], None] | None = None,
) -> RemoteReport:
    """Verify the whole log behind ``api`` up to its latest signed tree head.

    Args:
        api: the audit endpoints, as an auditor.
        pinned: the log key to hold the log to; None takes the server's (say so to the user).
        origin: the log's name.
        sample: how many entries get an inclusion proof, and earlier heads a consistency
            proof to the latest (0: none).
        progress: called with (entries checked, entries to check) after each page.

    Returns:
        The report; ``report.first`` names the first bad index, None if all is well.

    Raises:
        LogAltered: the server's key is not the pinned one, or the log is another log.
        RemoteLogError: an answer is malformed. ApiError, ApiUnavailable: HTTP failed.
    """
    started = time.monotonic()
    key = await _pinned_key(api, pinned, origin)
    report = RemoteReport(url=api.base_url, kid=key.kid, pinned=pinned is not None)
    raw = await api.latest_head()
    if raw is None:
        report.seconds = time.monotonic() - started
        return report
    try:
        latest = parse_signed_tree_head(raw)
    except EnvelopeError as exc:
        raise RemoteLogError(f"the latest tree head is malformed: {exc}") from exc
    size = latest.head.tree_size
    v = _Verifier(api, key, origin, report, progress)
    v.check_heads(await api.heads(size), latest)
    v.wanted = dict.fromkeys(_sample_indices(size, sample))
    await v.check_entries(size)
    await v.check_proofs(v.heads[-1], sample)
    report.seconds = time.monotonic() - started
    return report


# ---------------------------------------------------------------------------- monitor
def _load_state(path: Path) -> MonitorState | None:
    try:
        return MonitorState.parse(path, path.read_bytes())
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read the monitor state {path}: {exc.strerror}") from exc


def _save_state(state: MonitorState) -> None:
    tmp = state.path.with_name(state.path.name + ".tmp")
    try:
        tmp.write_bytes(state.encode())
        os.replace(tmp, state.path)
    except OSError as exc:
        raise ConfigError(f"cannot write the monitor state {state.path}: {exc.strerror}") from exc


def _alarm(
    state: MonitorState, kind: str, message: str, *heads: SignedTreeHead, err: TextIO
) -> int:
    """Keep the heads as evidence, stop trusting the log, and say so."""
    state.raise_alarm(kind, message, _iso(time.time_ns() // 1_000_000), heads)
    _save_state(state)
    kept = f"; {len(heads)} tree heads kept as evidence" if heads else ""
    print(f"istmo: ALARM: {message}{kept} in {state.path}", file=err)
    return ALARM_EXIT


async def monitor_remote(
    api: AuditApi,
    state_path: Path,
    *,
    pinned: VerifyKey | None,
    origin: str = DEFAULT_ORIGIN,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """One monitor run against the log behind ``api``; returns the exit code (0 or 3).

    Raises:
        ConfigError: the state file is unusable, or ``pinned`` is not the key in it.
        LogAltered: on the first run, the server's key is not ``pinned``.
        RemoteLogError, ApiError, ApiUnavailable: the server did not answer usefully (an
            outage is an error, not an alarm).
    """
    out = out or sys.stdout
    err = err or sys.stderr
    state = _load_state(state_path)
    if state is not None and state.alarm is not None:
        print(
            f"istmo: ALARM: the log is not trusted since {state.alarm.get('at')}: "
            f"{state.alarm.get('message')} (evidence in {state.path})",
            file=err,
        )
        return ALARM_EXIT
    if state is None:
        key = await _pinned_key(api, pinned, origin)
        if pinned is None:
            print(
                f"istmo: pinning the key the server names, {key.kid}: compare it with the "
                "broker's log.pub (or pass --log-key FILE)",
                file=err,
            )
        state = MonitorState(state_path, b64e(key.public), origin)
    key = VerifyKey(b64d(state.log_key, field="pinned log key", max_bytes=32))
    if pinned is not None and pinned != key:
        raise ConfigError(f"--log-key is not the key pinned in {state.path}")
    raw = await api.latest_head()
    last = state.head
    if raw is None:
        if last is None:
            print("the log has no signed tree head yet", file=out)
            return 0
        return _alarm(
            state,
            "rollback",
            f"the log has no tree head, but size {last.head.tree_size} was verified",
            last,
            err=err,
        )
    try:
        sth = parse_signed_tree_head(raw)
    except EnvelopeError as exc:
        raise RemoteLogError(f"the latest tree head is malformed: {exc}") from exc
    # 1. The new head is signed by the pinned key for the pinned log.
    try:
        new = verify_tree_head(sth, key, state.origin)
    except SignatureError as exc:
        heads = (last, sth) if last else (sth,)
        return _alarm(state, "bad_signature", f"the log's tree head: {exc}", *heads, err=err)
    if last is None:
        state.head = sth
        _save_state(state)
        print(
            f"pinned log key {key.kid} for {state.origin}; tree head size {new.tree_size}, "
            f"root {new.root_hash}, signed {_iso(new.timestamp)}",
            file=out,
        )
        return 0
    old = last.head
    # 2. It neither rolls back nor forks the last verified one.
    try:
        check_monotonic(old, new)
    except TreeHeadConflict as exc:
        msg = f"{exc.code.replace('_', ' ')}: {exc}"
        return _alarm(state, exc.code, msg, last, sth, err=err)
    # 3. It extends it: a consistency proof from the log, checked against both roots.
    if new.tree_size > old.tree_size:
        try:
            proof = await api.consistency(old.tree_size, new.tree_size)
            verify_consistency(old.tree_size, new.tree_size, old.root(), new.root(), proof)
        except (ProofError, RemoteLogError, ApiError) as exc:
            if isinstance(exc, ApiError) and exc.status != 400:
                raise
            return _alarm(
                state,
                "fork",
                f"fork: the log at size {new.tree_size} does not extend the head at size "
                f"{old.tree_size} seen before ({exc})",
                last,
                sth,
                err=err,
            )
        note = f"consistent with size {old.tree_size} ({len(proof)}-hash proof)"
    else:
        note = "unchanged"
    state.head = sth
    _save_state(state)
    print(f"tree head size {new.tree_size}, root {new.root_hash}: {note}", file=out)
    return 0


# ---------------------------------------------------------------------------- commands
class _Bar:
    def __init__(self, enabled: bool, stream: TextIO = sys.stderr) -> None:
        self.enabled, self.stream, self._drawn = enabled, stream, 0.0

    def update(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self._drawn < 0.2 and done < total):
            return
        self._drawn = now
        frac = min(done / max(total, 1), 1.0)
        end = "\n" if done >= total else ""
        self.stream.write(
            f"\rverify [{'#' * int(frac * 30):<30}] {frac:4.0%} {done:,}/{total:,} entries{end}"
        )
        self.stream.flush()


def _api(url: str, keystore: KeystoreFile, timeout: float) -> IstmoHttp:
    return IstmoHttp(url, keystore, scope="audit:read", timeout=timeout)


async def verify_command(
    url: str,
    keystore: KeystoreFile,
    *,
    log_key: Path | None,
    origin: str = DEFAULT_ORIGIN,
    sample: int = DEFAULT_SAMPLE,
    progress: bool = False,
    timeout: float = 30.0,
    http: IstmoHttp | None = None,
) -> int:
    """``istmo audit verify --from-url``: print the result; raise LogAltered if altered."""
    pinned = read_log_key(log_key) if log_key is not None else None
    client = http or _api(url, keystore, timeout)
    try:
        report = await verify_remote(
            AuditApi(client),
            pinned=pinned,
            origin=origin,
            sample=sample,
            progress=_Bar(progress).update,
        )
    finally:
        if http is None:
            await client.aclose()
    if report.first is not None:
        more = f" ({report.problems - 1} further problems)" if report.problems > 1 else ""
        raise LogAltered(
            f"audit log altered: first bad index {report.first.index}: {report.first.message}{more}"
        )
    if not report.pinned:
        print(
            f"istmo: the log key {report.kid} came from the server itself: compare it with "
            "the broker's log.pub and pass --log-key FILE",
            file=sys.stderr,
        )
    if report.latest is None:
        print(f"the audit log at {url} is empty: nothing to verify yet")
        return 0
    latest = report.latest
    print(
        f"verified {report.entries} entries and {report.heads} signed tree heads from {url} "
        f"in {report.seconds:.2f} s (key {report.kid}{', pinned' if report.pinned else ''})"
    )
    print(
        f"latest head: size {latest.tree_size}, root {latest.root_hash}, "
        f"signed {_iso(latest.timestamp)}"
    )
    print(f"proofs: {report.inclusion} inclusion, {report.consistency} consistency, all verify")
    return 0


async def monitor_command(
    url: str,
    keystore: KeystoreFile,
    *,
    state: Path,
    log_key: Path | None,
    origin: str = DEFAULT_ORIGIN,
    timeout: float = 30.0,
    http: IstmoHttp | None = None,
) -> int:
    """``istmo audit monitor --from-url``: one run; 0, or ``ALARM_EXIT``."""
    pinned = read_log_key(log_key) if log_key is not None else None
    client = http or _api(url, keystore, timeout)
    try:
        return await monitor_remote(AuditApi(client), state, pinned=pinned, origin=origin)
    finally:
        if http is None:
            await client.aclose()


# ---------------------------------------------------------------------------- the CLI
def _keystore(args: argparse.Namespace) -> KeystoreFile:
    if not args.who:
        raise ConfigError(
            "--from-url needs --as AUDITOR: the agency id or keystore file of an auditor "
            "(scope audit:read)"
        )
    path = resolve_keystore_path(args.who, args.data_dir)

    def ask() -> str:
        env = passphrase_from_env()
        if env is not None:
            return env
        if not sys.stdin.isatty():
            raise ConfigError(
                f"keystore {path} is protected by a passphrase: run interactively, or set "
                "ISTMO_PASSPHRASE_FILE to a file that holds it"
            )
        return getpass.getpass(f"passphrase for {path}: ")

    return load_keystore(path, ask)


def _url(text: str) -> str:
    if not text.startswith(("http://", "https://")) or len(text) > 2000:
        raise argparse.ArgumentTypeError("give the broker's API URL, like http://127.0.0.1:8844")
    return text.rstrip("/")


async def _verify_args(args: argparse.Namespace) -> int:
    return await verify_command(
        args.from_url,
        _keystore(args),
        log_key=args.log_key,
        origin=args.origin,
        sample=args.sample,
        progress=bool(args.progress),
        timeout=args.timeout,
    )


async def _monitor_args(args: argparse.Namespace) -> int:
    return await monitor_command(
        args.from_url,
        _keystore(args),
        state=args.state,
        log_key=args.log_key,
        origin=args.origin,
        timeout=args.timeout,
    )


def _add(parser: argparse.ArgumentParser, *flags: str, **kwargs: Any) -> None:
    """Add an option unless the parser has it already (the broker's local options)."""
    try:
        parser.add_argument(*flags, **kwargs)
    except argparse.ArgumentError:
        pass  # same meaning in both modes: --data-dir, --log-key, --state, --progress


def _remote_options(parser: argparse.ArgumentParser, *, alone: bool) -> None:
    parser.add_argument(
        "--from-url",
        type=_url,
        required=alone,
        metavar="URL",
        help="verify from the broker's HTTP API alone (e.g. http://127.0.0.1:8844), as the "
        "auditor --as: nothing of the broker needs to be installed here",
    )
    parser.add_argument(
        "--as",
        dest="who",
        metavar="AUDITOR",
        help="with --from-url: an auditor's agency id (its keystore in DATA_DIR/keys) or "
        "keystore file",
    )
    parser.add_argument(
        "--origin",
        default=DEFAULT_ORIGIN,
        help=f"with --from-url: the log's name (default {DEFAULT_ORIGIN})",
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="with --from-url: seconds per request"
    )
    _add(
        parser,
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("ISTMO_DATA_DIR", ".istmo")),
        help="where --as finds an agency's keystore (default ./.istmo, or $ISTMO_DATA_DIR)",
    )
    _add(parser, "--log-key", type=Path, help="the log's public key (log.pub) to pin")


def _route(parser: argparse.ArgumentParser, remote: Callable[[argparse.Namespace], Any]) -> None:
    local = parser.get_default("func")

    def run(args: argparse.Namespace) -> Any:
        if args.from_url:
            return remote(args)
        if local is None:  # pragma: no cover - --from-url is required without the broker
            raise ConfigError("give --from-url URL")
        if args.who:
            raise ConfigError("--as is for --from-url; the local log needs no identity")
        return local(args)

    parser.set_defaults(func=run)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse offers no public way to reach a group
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def add_remote_audit_parsers(sub: Any) -> None:
    """``istmo audit verify|monitor --from-url URL --as AUDITOR``.

    Call after the broker's commands are registered. With the broker installed, its
    ``audit verify`` and ``audit monitor`` gain ``--from-url`` (without it they read the
    local data directory, as before); with the client alone, ``istmo audit`` has just these
    two commands and ``--from-url`` is required. One command, either way, for the auditor.
    """
    group = sub.choices.get("audit")
    alone = group is None
    if group is None:
        group = sub.add_parser(
            "audit", help="verify and monitor an Istmo audit log over its HTTP API"
        )
        cmds = group.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
        cmds.add_parser(
            "verify",
            help="verify the whole log from the HTTP API: entries, heads, proofs",
            description="Fetch every entry and signed tree head, rebuild the tree, check "
            "every head and a sample of proofs; name the first bad index.",
        )
        cmds.add_parser(
            "monitor",
            help="check the log still extends the tree head seen last (exit 3 on an alarm)",
            description="Verify the latest signed tree head against the key pinned in STATE "
            "and a consistency proof from the head seen last; alarm on rollback or fork.",
        )
    parsers = _subcommands(group)
    verify, monitor = parsers.get("verify"), parsers.get("monitor")
    if verify is not None:
        _remote_options(verify, alone=alone)
        verify.add_argument(
            "--sample",
            type=int,
            default=DEFAULT_SAMPLE,
            help="with --from-url: entries given an inclusion proof, and earlier heads a "
            f"consistency proof (default {DEFAULT_SAMPLE})",
        )
        _add(verify, "--progress", action="store_true", help="progress bar on stderr")
        _route(verify, _verify_args)
    if monitor is not None:
        _remote_options(monitor, alone=alone)
        _add(monitor, "--state", type=Path, required=True, help="where the monitor remembers")
        _route(monitor, _monitor_args)
