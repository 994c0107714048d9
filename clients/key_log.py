"""Recipients' keys checked against the audit log before anything is sealed (ADR 28).

The SDK takes a recipient's encryption key from the signed directory (ADR 14). Whoever runs
the broker holds the directory key, so a signed record alone does not stop its operator
from substituting a key. With a ``KeyLogTrust`` the SDK also asks ``key-log`` for the key's
``key.registered`` entry and checks (``schemas.keylog``) that the entry commits to that
agency, key id and key digest and is included in the tree of a checkpoint cosigned by its
witness quorum (or, without witnesses, of a tree head signed by the pinned log key). A
substituted key then has to be in the log, where the agency's own monitor (``istmo keys
monitor``) sees it.

A key checked once stays checked: the log is append-only and the checkpoint witnessed,
so a proof never goes stale. The keys checked are kept by (agency, key id, key bytes), so a
publish to recipients already checked asks nothing. A key registered a moment ago may not
be under a checkpoint yet (the sequencer's batch, then the witnesses): the SDK asks again
a few times, about three seconds in all, before it refuses.

The trust file (``--key-log FILE``, ``ISTMO_KEY_LOG``) is the witnesses file of ADR 24
with the log's key and name added::

    {"log_key": "<base64 of log.pub>", "origin": "istmo.local/audit",
     "quorum": 2, "witnesses": [{"name": "witness.gt-justice", "key": "witness.gt-justice+…"}]}

A deployment without witnesses says so explicitly, ``"witnesses": [],
"trust_log_key_alone": true``: keys are then checked against the tree head the log key
signed (weaker: it does not stop whoever holds the log key; see ADR 28), and the SDK logs
a warning. ``"witnesses": []`` alone is refused, as ``istmo audit verify`` refuses a log
without witnesses unless told ``--trust-log-key-alone`` (ADR 24).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from schemas.canonical import b64d
from schemas.checkpoint import MAX_TRUST_BYTES, trust_from_options
from schemas.directory import AgencyRecord
from schemas.errors import ConfigError, EnvelopeError
from schemas.keylog import (
    MAX_KEY_LOG_AGENCIES,
    MAX_LEAF_BYTES,
    KeyLogProof,
    KeyLogReply,
    KeyLogRequest,
    KeyLogTrust,
    KeyNotLogged,
    KeyNotWitnessedYet,
    KeyRef,
    OwnKey,
    check_key_entry,
    logged_head,
    own_key_alarms,
    parse_key_entry,
)
from schemas.keys import SigningKey, VerifyKey
from schemas.keystore import KeystoreFile
from schemas.merkle_verify import ProofError, leaf_hash, verify_inclusion
from schemas.natskeys import user_public_key

__all__ = [
    "KEY_LOG_ENV",
    "RETRY_DELAYS_S",
    "KeyLogCheck",
    "MonitorReport",
    "load_key_log_trust",
    "monitor_own_keys",
    "own_keys",
    "trust_from_env",
]

log = logging.getLogger("istmo.sdk")

KEY_LOG_ENV = "ISTMO_KEY_LOG"
RETRY_DELAYS_S = (0.1, 0.3, 0.8, 1.8)  # a new key waits for a batch and the witnesses
MAX_CHECKED = 50_000
_HINT = (
    "the broker served a key its audit log does not show registered to that agency: "
    "nothing was sealed. Tell that agency and the broker's auditors; if it persists for "
    "every recipient, check --key-log names this broker's log key and witnesses"
)

Ask = Callable[[KeyLogRequest], Awaitable[KeyLogReply]]


def load_key_log_trust(path: Path) -> KeyLogTrust:
    """Read a key-log trust file (module docstring).

    Raises:
        ConfigError: unreadable, malformed, a bad key or quorum.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the key-log trust file {path}") from exc
    if len(raw) > MAX_TRUST_BYTES:
        raise ConfigError(f"the key-log trust file {path} is over {MAX_TRUST_BYTES} bytes")
    try:
        doc = json.loads(raw)
        key = VerifyKey(b64d(str(doc["log_key"]).strip(), field="log_key", max_bytes=32))
        origin = str(doc.get("origin", "istmo.local/audit"))
        alone = doc.get("trust_log_key_alone", False)
        if not isinstance(alone, bool):
            raise TypeError("trust_log_key_alone is not true or false")
    except (ValueError, KeyError, TypeError, AttributeError, EnvelopeError) as exc:
        raise ConfigError(
            f"cannot read the key-log trust file {path}: {exc}",
            hint='it holds {"log_key": …, "origin": …, "quorum": K, "witnesses": [...]}',
        ) from exc
    witnesses = trust_from_options([], None, (raw, str(path)))
    if witnesses is None and not alone:
        raise ConfigError(
            f"the key-log trust file {path} names no witnesses",
            code="witnesses_required",
            hint='add the witnesses, or "trust_log_key_alone": true to check keys against '
            "the log key's signed head alone (it does not stop whoever holds that key)",
        )
    if witnesses is not None and alone:
        raise ConfigError(
            f"the key-log trust file {path} names witnesses and trust_log_key_alone: drop one"
        )
    return KeyLogTrust(key, origin, witnesses, log_key_alone=alone)


def trust_from_env() -> KeyLogTrust | None:
    """The trust file ``ISTMO_KEY_LOG`` names, if it names one."""
    path = os.environ.get(KEY_LOG_ENV)
    return load_key_log_trust(Path(path)) if path else None


class KeyLogCheck:
    """Which recipients' keys this client has seen in the log, and asking for the rest.

    Args:
        trust: the log to check against; None turns the check off (the SDK before ADR 28).
        ask: sends one ``key-log`` request.
        sleep: waits between attempts (tests pass their own).
    """

    def __init__(
        self,
        trust: KeyLogTrust | None,
        ask: Ask,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.trust = trust
        if trust is not None and trust.log_key_alone:
            log.warning(
                "key-log check on the log key alone (trust_log_key_alone): it does not stop "
                "whoever holds the log key from signing a head over a tree made for this client"
            )
        self._ask = ask
        self._sleep = sleep
        # (agency, kid, the record's base64 public key) -> index of the entry that showed it:
        # the key as the record holds it, so a kept check costs one lookup, no hashing.
        self._checked: OrderedDict[tuple[str, str, str], int] = OrderedDict()
        self.asked = 0  # requests sent, for tests and figures

    def checked(self, record: AgencyRecord) -> int | None:
        """The index of the entry that showed ``record``'s encryption key is logged."""
        key = record.encryption_key
        if key is None:
            return None
        return self._checked.get((record.id, key.kid, key.public))

    async def check(self, records: Sequence[AgencyRecord]) -> None:
        """Return when every record's encryption key is in the log; else refuse.

        Raises:
            KeyNotLogged: a key without an entry that checks (after the retries), or an
                entry that contradicts the record (at once).
            SignatureError: the answer's checkpoint or head does not verify
                (``key_log_untrusted``), or lacks the quorum (``quorum_missing``).
            BusUnavailable, IstmoError: the request failed.
        """
        if self.trust is None:
            return
        todo = {
            (r.id, r.encryption_key.kid): r
            for r in records
            if r.encryption_key is not None and self.checked(r) is None
        }
        why: dict[tuple[str, str], str] = {}
        for delay in (*RETRY_DELAYS_S, None):
            why = {}
            refs = list(todo)
            for start in range(0, len(refs), MAX_KEY_LOG_AGENCIES):
                page = refs[start : start + MAX_KEY_LOG_AGENCIES]
                why.update(await self._check_page([todo[r] for r in page]))
            todo = {r: todo[r] for r in why}
            hard = [m for m in why.values() if not m.endswith(_NOT_YET)]
            if not todo or hard or delay is None:
                break
            await self._sleep(delay)
        if why:
            shown = "; ".join(sorted(why.values())[:5])
            raise KeyNotLogged(
                f"refused to seal for {len(why)} recipient(s) whose key is not shown in the "
                f"audit log ({self.trust.mode}): {shown}",
                hint=_HINT,
            )

    async def _check_page(self, records: list[AgencyRecord]) -> dict[tuple[str, str], str]:
        assert self.trust is not None  # noqa: S101  # check() returned otherwise
        self.asked += 1
        reply = await self._ask(
            KeyLogRequest(
                keys=tuple(
                    KeyRef(agency=r.id, kid=r.encryption_key.kid)
                    for r in records
                    if r.encryption_key is not None
                )
            )
        )
        head = logged_head(reply, self.trust)
        # Each entry read once, then checked only for the key it names.
        by_key: dict[tuple[str, str], list[KeyLogProof]] = {}
        for item in reply.entries:
            try:
                named = parse_key_entry(
                    item.index, b64d(item.leaf, field="leaf", max_bytes=MAX_LEAF_BYTES)
                )
            except EnvelopeError:
                continue  # not a key entry: about no key asked
            if named is not None:
                by_key.setdefault((named.agency, named.kid), []).append(item)
        why: dict[tuple[str, str], str] = {}
        for r in records:
            key = r.encryption_key
            if key is None:  # pragma: no cover - filtered by check()
                continue
            ref = (r.id, key.kid)
            if head is None:
                why[ref] = f"{r.id}: the log serves no {_HEAD[self.trust.mode]}{_NOT_YET}"
                continue
            public = b64d(key.public, field="kem key", max_bytes=1216)
            problem = f"{r.id}'s key {key.kid}: no registration entry in the log up to size "
            problem += f"{head.size}{_NOT_YET}"
            for item in by_key.get(ref, []):
                try:
                    entry = check_key_entry(
                        item, head, agency=r.id, kid=key.kid, public=public, use="encryption"
                    )
                except KeyNotWitnessedYet as exc:
                    if problem.endswith(_NOT_YET):  # a contradiction found stays
                        problem = f"{exc}{_NOT_YET}"
                    continue
                except KeyNotLogged as exc:
                    problem = str(exc)  # a contradiction: refused unless another entry holds
                    continue
                if entry is not None:
                    self._remember((r.id, key.kid, key.public), entry.index)
                    break
            else:
                why[ref] = problem
        return why

    def _remember(self, key: tuple[str, str, str], index: int) -> None:
        self._checked[key] = index
        while len(self._checked) > MAX_CHECKED:
            self._checked.popitem(last=False)


_NOT_YET = " (yet)"
_HEAD = {"witnessed": "checkpoint with the witness quorum", "signed-head": "signed tree head"}


# ---------------------------------------------------------------------- the agency's monitor
def own_keys(keystore: KeystoreFile) -> list[OwnKey]:
    """Every public key ``keystore`` holds the private half of, old ones included."""
    out = [
        OwnKey(
            k.kid,
            "signing",
            SigningKey(b64d(k.private, field="signing key", max_bytes=32)).verify_key.public,
        )
        for k in keystore.signing_keys
    ]
    for e in keystore.encryption_keys:
        key = keystore.encryption_key(e.kid)
        if key is not None:
            out.append(OwnKey(e.kid, "encryption", key.public_key.public))
    nkey = user_public_key(keystore.nats_seed)
    out.append(OwnKey(nkey, "nats", nkey.encode()))
    return out


@dataclass
class MonitorReport:
    """What ``monitor_own_keys`` saw: entries proven, not yet witnessed, and alarms."""

    agency: str
    mode: str
    size: int = 0
    proven: int = 0
    unproven: list[str] = field(default_factory=list)
    alarms: list[str] = field(default_factory=list)


def monitor_own_keys(
    keystore: KeystoreFile, reply: KeyLogReply, trust: KeyLogTrust | None
) -> MonitorReport:
    """Judge the caller's own key entries (a ``key-log`` answer with ``mine``).

    Each entry is checked for inclusion in the verified tree (when ``trust`` is given),
    then every ``key.registered`` entry for this agency must name a key the keystore holds
    (``own_key_alarms``). An entry whose proof fails is an alarm too.

    Raises:
        SignatureError: the answer's checkpoint or head does not verify.
    """
    agency = keystore.agency
    report = MonitorReport(agency, "unverified" if trust is None else trust.mode)
    head = None if trust is None else logged_head(reply, trust)
    report.size = 0 if head is None else head.size
    entries = []
    for item in reply.entries:
        try:
            leaf = b64d(item.leaf, field="leaf", max_bytes=MAX_LEAF_BYTES)
            entry = parse_key_entry(item.index, leaf)
        except EnvelopeError as exc:
            report.alarms.append(f"entry {item.index}: {exc}")
            continue
        if entry is None:
            report.alarms.append(f"entry {item.index} is not a key entry, yet was served as one")
            continue
        entries.append(entry)
        if head is None:
            report.unproven.append(f"entry {item.index}: not checked against the log")
        elif item.tree_size != head.size:
            report.unproven.append(f"entry {item.index}: not under the checkpoint yet")
        else:
            try:
                proof = [b64d(p, field="proof", max_bytes=32) for p in item.proof]
                verify_inclusion(leaf_hash(leaf), item.index, head.size, proof, head.root)
                report.proven += 1
            except (ProofError, EnvelopeError) as exc:
                report.alarms.append(f"entry {item.index}: the inclusion proof fails ({exc})")
    report.alarms += own_key_alarms(agency, entries, own_keys(keystore))
    return report
