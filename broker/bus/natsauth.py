"""The broker as NATS operator (ADR 0013): its keys and every JWT it issues (pure).

In operator mode nats-server trusts one operator, and learns each account from a JWT the
operator signed; accounts come, change and go by pushing one JWT, with no config reload.

* Keys. Every key is derived from one secret of at least 32 bytes (``broker.bus.claims``
  keeps it in ``broker_dir/nats-operator.key``, mode 0600): the operator, the system account
  and its user (through which the broker pushes account JWTs), account ISTMO, one account per
  agency, and one *signing key per agency and user nkey*. Nothing else needs storing, and
  every process of the broker that reads the secret derives the same keys.
* Account ISTMO (the relay and JetStream) exports each kind of agency service once, on a
  wildcard (``broker.bus.grants.RELAY_SERVICE_EXPORTS``), so its JWT is the same whatever
  the directory holds. The exports need no activation tokens: an account imports only what
  its JWT lists, and only this operator signs account JWTs; a token, signed by a key derived
  from the same secret, would add no second party and cost nats-server four signature
  checks per import each time it loads an account (ADR 0013).
* An agency's account imports exactly its own services and the announcements; its
  ``default_permissions`` are the allow-lists of config mode. Its user JWT carries no
  permissions of its own, so those defaults apply, and nats-server applies a change of
  them to live connections.
* Who may connect. An agency's user JWT is signed by the signing key derived for its
  (agency, user nkey). The account JWT lists that key only while the agency is active and
  the nkey is its current one: suspending or revoking an agency, or re-enrolling it with a
  new nkey, pushes an account JWT without it, and nats-server closes the connections of
  users that key signed at once and refuses them from then on. Reinstating lists it again:
  the agency's JWT works again unchanged.

Pushing the JWTs is ``broker.bus.claims``'; writing the config that trusts the operator is
``broker.bus.natsconf``'s.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.bus.grants import (
    RELAY_SERVICE_EXPORTS,
    RELAY_STREAM_EXPORTS,
    agency_publish_subjects,
    agency_services,
    agency_subscribe_subjects,
)
from broker.bus.natsconf import OperatorMode
from broker.bus.natsjwt import JwtError, NatsClaims, Signer, decode_jwt, derive_seed, encode_jwt
from schemas.ids import parse_agency_id
from schemas.subjects import ANNOUNCE_SUBJECT, RELAY_ACCOUNT

__all__ = ["AGENCY_SHAPE", "SYSTEM_ACCOUNT_NAME", "AgencyAccount", "NatsOperator"]

SYSTEM_ACCOUNT_NAME = "SYS"
_UNLIMITED = -1
# nats-io/jwt's defaults for a new account, JetStream off (NewAccountClaims).
_NATS_LIMITS = {"subs": _UNLIMITED, "data": _UNLIMITED, "payload": _UNLIMITED}
_ACCOUNT_LIMITS = {
    **_NATS_LIMITS,
    "imports": _UNLIMITED,
    "exports": _UNLIMITED,
    "wildcards": True,
    "conn": _UNLIMITED,
    "leaf": _UNLIMITED,
}
_JETSTREAM_LIMITS = {
    "mem_storage": _UNLIMITED,
    "disk_storage": _UNLIMITED,
    "streams": _UNLIMITED,
    "consumer": _UNLIMITED,
}
# An agency's account exports nothing (nats-io/jwt checks it when it validates the JWT).
_AGENCY_LIMITS = {**_ACCOUNT_LIMITS, "exports": 0, "wildcards": False}
_TEMPLATE_AGENCY = "template-agency"


def _agency_shape() -> str:
    """A tag naming what every agency's account grants (``broker.bus.grants``, the limits):
    an account JWT stored with another tag was issued by an Istmo that granted otherwise,
    and is issued again when the stack starts."""
    grants = {
        "services": [
            (s.subject.replace(_TEMPLATE_AGENCY, "{agency}"), s.streamed)
            for s in agency_services(_TEMPLATE_AGENCY)
        ],
        "listens": [
            s.replace(_TEMPLATE_AGENCY, "{agency}")
            for s in agency_subscribe_subjects(_TEMPLATE_AGENCY)
        ],
        "limits": _AGENCY_LIMITS,
    }
    text = json.dumps(grants, sort_keys=True).encode()
    return "istmo-grants-" + hashlib.sha256(text).hexdigest()[:16]


AGENCY_SHAPE = _agency_shape()


@dataclass(frozen=True)
class AgencyAccount:
    """What an agency's account JWT depends on: the JWT changes exactly when this does.

    Attributes:
        agency: the agency id.
        nkey_public: its current user nkey ("U..."), None while it has none.
        active: whether it may connect (suspended and revoked agencies may not).
    """

    agency: str
    nkey_public: str | None
    active: bool

    @property
    def admits(self) -> str | None:
        """The user nkey that may connect now, if any."""
        return self.nkey_public if self.active else None


class NatsOperator:
    """The operator's keys, derived from one secret, and the JWTs they sign.

    Args:
        master: the secret (at least 32 bytes). Keep it like the broker's other keys: every
            account's identity depends on it, JetStream's streams included (they live under
            account ISTMO's public key), so it must never change for a data directory.
    """

    __slots__ = (
        "_accounts",
        "_master",
        "_operator",
        "_relay",
        "_signers",
        "_system",
        "_system_user",
    )

    def __init__(self, master: bytes) -> None:
        self._master = master
        self._accounts: dict[str, str] = {}  # agency -> its account's public key
        self._signers: dict[tuple[str, str], str] = {}  # (agency, nkey) -> signer's public
        self._operator = Signer(derive_seed(master, "operator", "operator"))
        self._system = Signer(derive_seed(master, "account\x00system", "account"))
        self._system_user = derive_seed(master, "user\x00system", "user")
        self._relay = Signer(derive_seed(master, "account\x00relay", "account"))

    def __repr__(self) -> str:
        return f"NatsOperator({self.operator_public})"

    # ---------------------------------------------------------------- public keys
    @property
    def operator_public(self) -> str:
        return self._operator.public

    @property
    def system_account(self) -> str:
        """The system account's public key (nats-server's ``system_account``)."""
        return self._system.public

    @property
    def relay_account(self) -> str:
        """Account ISTMO's public key: nats-server names the account by it."""
        return self._relay.public

    @property
    def system_user_seed(self) -> str:
        """The seed of the system account's user, as which the broker pushes JWTs."""
        return self._system_user

    def agency_account(self, agency: str) -> str:
        """The public key of ``agency``'s account."""
        public = self._accounts.get(agency)
        if public is None:  # derived once: a start compares thousands of accounts
            label = f"account\x00agency\x00{parse_agency_id(agency)}"
            public = self._accounts[agency] = Signer(
                derive_seed(self._master, label, "account")
            ).public
        return public

    def _signer(self, agency: str, nkey_public: str) -> Signer:
        """The signing key of ``agency``'s users with ``nkey_public`` (see the module)."""
        label = f"signer\x00{parse_agency_id(agency)}\x00{nkey_public}"
        signer = Signer(derive_seed(self._master, label, "account"))
        self._signers[(agency, nkey_public)] = signer.public
        return signer

    def _signer_public(self, agency: str, nkey_public: str) -> str:
        """The public key of ``_signer(agency, nkey_public)``, derived once (only the
        public half is kept: a start lists and checks thousands of them)."""
        public = self._signers.get((agency, nkey_public))
        return public if public is not None else self._signer(agency, nkey_public).public

    def trust(self, resolver_dir: Path, *, issued_at: int) -> OperatorMode:
        """What a node's config needs to trust this operator (``NatsLayout.operator``):
        its JWT, and the system account's and ISTMO's JWTs to start with."""
        return OperatorMode(
            operator_jwt=self.operator_jwt(issued_at=issued_at),
            system_account=self.system_account,
            preload=(
                (self.system_account, self.system_account_jwt(issued_at=issued_at)),
                (self.relay_account, self.relay_account_jwt(issued_at=issued_at)),
            ),
            resolver_dir=resolver_dir,
        )

    # ---------------------------------------------------------------- operator, SYS, ISTMO
    def operator_jwt(self, *, issued_at: int) -> str:
        """The operator's own JWT, self-signed: the config's ``operator``."""
        return encode_jwt(
            "operator",
            signer=self._operator,
            subject=self.operator_public,
            issued_at=issued_at,
            name="istmo",
            nats={"system_account": self.system_account},
        )

    def system_account_jwt(self, *, issued_at: int) -> str:
        return encode_jwt(
            "account",
            signer=self._operator,
            subject=self.system_account,
            issued_at=issued_at,
            name=SYSTEM_ACCOUNT_NAME,
            nats={"limits": _ACCOUNT_LIMITS},
        )

    def system_user_jwt(self, *, issued_at: int) -> str:
        return encode_jwt(
            "user",
            signer=self._system,
            subject=Signer(self._system_user).public,
            issued_at=issued_at,
            name="istmo-claims",
            nats=_NATS_LIMITS,
        )

    def relay_account_jwt(self, *, issued_at: int) -> str:
        """Account ISTMO: JetStream, every agency service as a wildcard export, and the
        announcements as a stream."""
        exports: list[dict[str, Any]] = [
            {
                "name": service.subject,
                "subject": service.subject,
                "type": "service",
                **({"response_type": "Stream"} if service.streamed else {}),
            }
            for service in RELAY_SERVICE_EXPORTS
        ]
        exports += [
            {"name": subject, "subject": subject, "type": "stream"}
            for subject in RELAY_STREAM_EXPORTS
        ]
        return encode_jwt(
            "account",
            signer=self._operator,
            subject=self.relay_account,
            issued_at=issued_at,
            name=RELAY_ACCOUNT,
            nats={"limits": {**_ACCOUNT_LIMITS, **_JETSTREAM_LIMITS}, "exports": exports},
        )

    def relay_user_jwt(self, relay_nkey_public: str, *, issued_at: int) -> str:
        """The broker's own user in ISTMO (relays, sequencer, gate): no limits of its own."""
        return encode_jwt(
            "user",
            signer=self._relay,
            subject=relay_nkey_public,
            issued_at=issued_at,
            name="istmo-relay",
            nats=_NATS_LIMITS,
        )

    # ---------------------------------------------------------------- agencies
    def agency_account_jwt(self, account: AgencyAccount, *, issued_at: int) -> str:
        """The JWT of ``account.agency``'s account: its imports from ISTMO, its permissions,
        and the signing key of its user while that user may connect.

        Raises:
            EnvelopeError: the agency id is not valid.
        """
        agency = account.agency
        relay = self.relay_account
        imports = [
            {"subject": service.subject, "account": relay, "type": "service"}
            for service in agency_services(agency)
        ]
        imports.append({"subject": ANNOUNCE_SUBJECT, "account": relay, "type": "stream"})
        nats: dict[str, Any] = {
            "tags": [AGENCY_SHAPE],
            "limits": _AGENCY_LIMITS,
            "imports": imports,
            "default_permissions": {
                "pub": {"allow": list(agency_publish_subjects(agency))},
                "sub": {"allow": list(agency_subscribe_subjects(agency))},
            },
        }
        if account.admits is not None:
            nats["signing_keys"] = [self._signer_public(agency, account.admits)]
        return encode_jwt(
            "account",
            signer=self._operator,
            subject=self.agency_account(agency),
            issued_at=issued_at,
            name=agency,
            nats=nats,
        )

    def agency_account_is_current(self, claims: NatsClaims, account: AgencyAccount) -> bool:
        """Whether ``claims`` (a stored JWT, decoded and verified) are this operator's of
        ``account.agency``'s account, granting what this Istmo grants and admitting exactly
        whom ``account`` says: if so, the JWT need not be pushed again."""
        admits = account.admits
        signers = [] if admits is None else [self._signer_public(account.agency, admits)]
        return (
            claims.kind == "account"
            and claims.issuer == self.operator_public
            and claims.subject == self.agency_account(account.agency)
            and claims.name == account.agency
            and list(claims.nats.get("tags") or ()) == [AGENCY_SHAPE]
            and list(claims.nats.get("signing_keys") or ()) == signers
        )

    def is_own_user_jwt(self, token: str, agency: str, nkey_public: str) -> bool:
        """Whether ``token`` is a user JWT this operator issued to ``agency`` for
        ``nkey_public`` (a keystore may hold one from another data directory)."""
        try:
            claims = decode_jwt(token, kind="user")
        except JwtError:
            return False
        return (
            claims.issuer == self._signer_public(agency, nkey_public)
            and claims.subject == nkey_public
            and claims.nats.get("issuer_account") == self.agency_account(agency)
        )

    def agency_user_jwt(self, agency: str, nkey_public: str, *, issued_at: int) -> str:
        """The user JWT ``agency`` connects with, for its user nkey ``nkey_public``.

        Not a secret: it names the nkey whose seed must sign the server's nonce. It stays
        valid for as long as the agency's account JWT lists its signing key (see the module).
        """
        return encode_jwt(
            "user",
            signer=self._signer(agency, nkey_public),
            subject=nkey_public,
            issued_at=issued_at,
            name=parse_agency_id(agency),
            nats={"issuer_account": self.agency_account(agency), **_NATS_LIMITS},
        )
