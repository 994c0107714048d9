"""One data directory, opened: the broker's keys, its registry and the live directory.

Every process of a region opens its data directory the same way (``istmo up``, a
joining ``istmo relay``, and each operator command), through ``DataDir.open``. What
runs over it (NATS, the relay, the API) is ``broker.runtime.stack``'s.
"""

from __future__ import annotations

import fcntl
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property

from nats.aio.client import Client as NATS
from sqlmodel import SQLModel

from broker.api.oauth import load_token_key
from broker.audit import events
from broker.bus.claims import load_operator
from broker.bus.natsauth import NatsOperator
from broker.clock import SYSTEM_CLOCK, Clock
from broker.config import NatsAuth, Settings
from broker.directory.admins import create_demo_admin
from broker.directory.policy_sets import active_policy_dir
from broker.directory.service import DirectoryService, load_demo_directory
from broker.files import signing_key_file, write_private
from broker.policy.engine import PolicyBundle
from broker.runtime.broker_user import connect_broker, relay_jwt, relay_seed
from broker.runtime.claim import nats_auth_of
from broker.store.registry import EncryptionKeyRow, NatsUserRow, Registry, SigningKeyRow
from schemas.audit import AuditEvent
from schemas.canonical import b64e
from schemas.errors import ConfigError
from schemas.keys import SigningKey
from schemas.keystore import KeystoreFile, new_keystore
from schemas.natskeys import new_user_seed, user_public_key

__all__ = ["DataDir"]

_KEYSTORE_WRITERS = 4  # threads writing the demo keystores (each write waits on an fsync)


@dataclass(frozen=True)
class DataDir:
    """The files, registry and keys of one data directory.

    Attributes:
        settings: where everything lives and the limits in force.
        registry: the broker's store (SQLite in the directory, or ISTMO_DATABASE_URL).
        policy: the policy set in force when it was opened.
        directory: the live directory and policy, signed with ``directory_key``: made on
            first use, for at a few thousand agencies it takes about a second, which a
            command that only changes the registry (``istmo admin suspend``) never pays.
        directory_key: signs the directory excerpts agencies verify.
        relay_seed: the broker's own NATS user (nkey seed).
        token_key: signs the API's access tokens.
        nats_auth: how NATS confines agencies here (``broker.runtime.claim.nats_auth_of``).
        nats_operator: in operator mode, the broker as NATS operator (ADR 0013).
        issued: the agencies whose keystores this open made, each with its user JWT
            already (operator mode): ``issue_nats_jwts`` need not read them back.
    """

    settings: Settings
    registry: Registry
    policy: PolicyBundle
    directory_key: SigningKey
    relay_seed: str
    token_key: SigningKey
    nats_auth: NatsAuth = "config"
    nats_operator: NatsOperator | None = None
    issued: frozenset[str] = field(default=frozenset(), repr=False)

    @classmethod
    def open(
        cls,
        settings: Settings,
        *,
        demo: bool = False,
        out: Callable[[str], None] = print,
        clock: Clock = SYSTEM_CLOCK,
    ) -> DataDir:
        """Open (or make) the data directory of ``settings``.

        Two commands opening one new directory at once take turns (a file lock), so keys
        and the demo directory are made once.

        Args:
            settings: the broker's settings.
            demo: load the demo directory (with a keystore per agency) into an empty registry.
            out: where to say what was made.
            clock: when the demo directory's keys and events are made.
        """
        s = settings
        s.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with (s.data_dir / ".prepare.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            directory_key = signing_key_file(s.broker_dir / "directory.key", "directory key")
            seed = relay_seed(s)
            token_key = load_token_key(s.broker_dir)
            nats_auth = nats_auth_of(s)
            operator = load_operator(s.broker_dir) if nats_auth == "operator" else None
            registry = Registry(s.db_url, broker_dir=s.broker_dir)
            bundle = PolicyBundle.load(active_policy_dir(s, registry))
            issued: frozenset[str] = frozenset()
            if demo and registry.is_empty():
                issued = _load_demo(s, registry, directory_key, out, clock, operator)
        return cls(
            settings=s,
            registry=registry,
            policy=bundle,
            directory_key=directory_key,
            relay_seed=seed,
            token_key=token_key,
            nats_auth=nats_auth,
            nats_operator=operator,
            issued=issued,
        )

    @cached_property
    def directory(self) -> DirectoryService:
        """The live directory and policy (see the class's attributes), made once."""
        return DirectoryService(self.registry, self.policy, self.directory_key)

    @property
    def relay_jwt(self) -> str | None:
        """The user JWT of the broker's NATS user in operator mode (None in config mode)."""
        return relay_jwt(self.nats_operator, self.relay_seed)

    async def connect(self, url: str | Sequence[str], *, reconnects: int = -1) -> NATS:
        """The broker's own connection to NATS (``broker.runtime.broker_user``)."""
        return await connect_broker(
            self.settings,
            url,
            seed=self.relay_seed,
            operator=self.nats_operator,
            reconnects=reconnects,
        )

    def issue_nats_jwts(self) -> int:
        """In operator mode, give each agency keystore this broker keeps (the demo
        directory's, in ``keys_dir``) the user JWT of its NATS key, if it lacks it or holds
        another operator's. Returns how many were written.

        A keystore whose NATS key is not the agency's registered one is left alone. The
        keystores this open made (``issued``) hold their JWT already and are not read.
        """
        operator = self.nats_operator
        if operator is None:
            return 0
        registered = {u.agency: u.nkey_public for u in self.registry.nats_users()}
        now = SYSTEM_CLOCK.now_s()
        written = 0
        for path in sorted(self.settings.keys_dir.glob("*.json")):
            if path.stem in self.issued:
                continue
            try:
                keystore = KeystoreFile.parse(path.read_bytes())
            except (OSError, ConfigError):
                continue  # the administrator's, a protected one, or not a keystore
            key = user_public_key(keystore.nats_seed)
            if registered.get(keystore.agency) != key:
                continue
            if keystore.nats_jwt is not None and operator.is_own_user_jwt(
                keystore.nats_jwt, keystore.agency, key
            ):
                continue
            token = operator.agency_user_jwt(keystore.agency, key, issued_at=now)
            updated = keystore.model_copy(update={"nats_jwt": token})
            write_private(path, updated.model_dump_json(indent=2).encode())
            written += 1
        return written

    def close(self) -> None:
        self.registry.close()


def _load_demo(
    s: Settings,
    registry: Registry,
    directory_key: SigningKey,
    out: Callable[[str], None],
    clock: Clock,
    operator: NatsOperator | None = None,
) -> frozenset[str]:
    """Load the demo directory into an empty registry, with a keystore per agency (in
    operator mode holding its user JWT). Returns the agencies given one with a JWT.

    The keystores are written (each fsynced) on a few threads while the next agencies'
    keys are made; every one is on disk before the registry records the agencies."""
    demo = load_demo_directory(s.policy_dir)
    at = clock.now_ms()
    now = at // 1000
    rows: list[SQLModel] = [*demo.jurisdictions, *demo.agencies, *demo.subscriptions]
    trail: list[AuditEvent] = []
    with ThreadPoolExecutor(max_workers=_KEYSTORE_WRITERS) as writers:
        written = []
        for agency in demo.agencies:
            seed = new_user_seed()
            nkey = user_public_key(seed)
            ks, sk, ek = new_keystore(
                agency=agency.id,
                nats_seed=seed,
                directory_key=directory_key.verify_key,
                now=now,
            )
            if operator is not None:
                jwt = operator.agency_user_jwt(agency.id, nkey, issued_at=SYSTEM_CLOCK.now_s())
                ks = ks.model_copy(update={"nats_jwt": jwt})
            written.append(
                writers.submit(
                    write_private,
                    s.keys_dir / f"{agency.id}.json",
                    ks.model_dump_json(indent=2).encode(),
                )
            )
            vk, ep = sk.verify_key, ek.public_key
            rows += [
                SigningKeyRow(kid=vk.kid, agency=agency.id, public=b64e(vk.public), created_at=now),
                EncryptionKeyRow(
                    kid=ep.kid, agency=agency.id, kem=ep.kem, public=b64e(ep.public), created_at=now
                ),
                NatsUserRow(agency=agency.id, nkey_public=nkey),
            ]
            trail += [
                events.demo_agency_enrolled(
                    agency.id, sector=agency.sector, state=agency.state, at=at
                ),
                events.key_registered(
                    agency.id, vk.kid, "signing", at=at, actor="system", public=vk.public
                ),
                events.key_registered(
                    agency.id,
                    ep.kid,
                    "encryption",
                    at=at,
                    actor="system",
                    kem=ep.kem,
                    public=ep.public,
                ),
                events.key_registered(
                    agency.id, nkey, "nats", at=at, actor="system", public=nkey.encode()
                ),
            ]
        for done in written:
            done.result()  # a keystore that could not be written stops the load here
    registry.record(rows, trail)
    create_demo_admin(registry, s.keys_dir, directory_key.verify_key, now=now)
    out(f"loaded the demo directory: {len(demo.agencies)} agencies, keystores in {s.keys_dir}")
    return frozenset(a.id for a in demo.agencies) if operator is not None else frozenset()
