"""Administrators: identities outside the directory of agencies, each with one Ed25519
public key, who get the ``admin`` scope on the HTTP API (``broker.api.oauth``).

An administrator holds its private key in a keystore file of the agencies' format (its
encryption key and NATS seed are unused). Administrator ids and agency ids share one
namespace: ``add_admin`` refuses an id an agency has, and the token endpoint refuses an id
that is both. Left to others: suspending administrators and rotating their keys (the
lifecycle commands).
"""

from __future__ import annotations

import re
from pathlib import Path

from sqlmodel import Field, SQLModel

from broker.audit import events
from broker.files import write_private
from broker.store.registry import AgencyRow, Registry
from schemas.canonical import b64e
from schemas.errors import ConfigError
from schemas.ids import AGENCY_ID_PATTERN
from schemas.keys import VerifyKey
from schemas.keystore import new_keystore
from schemas.natskeys import new_user_seed

__all__ = ["AdminRow", "add_admin", "create_demo_admin"]

DEMO_ADMIN = "admin"
_ID = re.compile(AGENCY_ID_PATTERN)


class AdminRow(SQLModel, table=True):
    """An administrator: an id outside the agencies' and one Ed25519 public key."""

    __tablename__ = "admin_identity"
    id: str = Field(primary_key=True, max_length=32)
    name: str = Field(max_length=200)
    kid: str = Field(unique=True, max_length=40)
    public: str = Field(max_length=64)
    status: str = Field(default="active", max_length=16)  # active | suspended | revoked
    created_at: int


def add_admin(
    registry: Registry, admin_id: str, key: VerifyKey, *, name: str, now: int, actor: str
) -> AdminRow:
    """Register administrator ``admin_id`` with the public ``key``, audited.

    Raises:
        ConfigError: a bad id, or an agency or administrator already has it.
    """
    if _ID.fullmatch(admin_id) is None:
        raise ConfigError(f"invalid administrator id {admin_id[:40]!r}")
    with registry.session() as s:
        if s.get(AdminRow, admin_id) is not None or s.get(AgencyRow, admin_id) is not None:
            raise ConfigError(f"the id {admin_id} is taken")
    row = AdminRow(
        id=admin_id, name=name[:200], kid=key.kid, public=b64e(key.public), created_at=now
    )
    event = events.key_registered(
        admin_id, key.kid, "signing", at=now * 1000, actor=actor, role="admin"
    )
    registry.record([row], [event])
    return row


def create_demo_admin(
    registry: Registry, keys_dir: Path, directory_key: VerifyKey, *, now: int
) -> Path | None:
    """The demo administrator ``admin``: its keystore in ``keys_dir/admin.json`` (the
    agencies' format; the NATS seed in it is never used) and its public key registered.

    Returns:
        The keystore path, or None if ``admin`` already exists.
    """
    with registry.session() as s:
        if s.get(AdminRow, DEMO_ADMIN) is not None:
            return None
    ks, sk, _ek = new_keystore(
        agency="admin", nats_seed=new_user_seed(), directory_key=directory_key, now=now
    )
    path = keys_dir / "admin.json"
    write_private(path, ks.model_dump_json(indent=2).encode())
    add_admin(registry, "admin", sk.verify_key, name="Demo administrator", now=now, actor="system")
    return path
