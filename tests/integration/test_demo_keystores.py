"""The demo directory's keystores in operator mode (ADR 0013): each holds its user JWT
from the moment it is written, and ``DataDir.issue_nats_jwts`` mends only what is not
this operator's (real SQLite, real files)."""

from __future__ import annotations

import json
from pathlib import Path

from broker.bus.natsauth import NatsOperator
from broker.config import Settings
from broker.files import write_private
from broker.runtime.datadir import DataDir
from schemas.natskeys import user_public_key


def _open(data_dir: Path) -> DataDir:
    return DataDir.open(
        Settings(data_dir=data_dir, nats_auth="operator"), demo=True, out=lambda _l: None
    )


def test_demo_keystores_hold_this_operators_jwt_and_only_a_foreign_one_is_replaced(
    tmp_path: Path,
) -> None:
    data = _open(tmp_path)
    try:
        operator = data.nats_operator
        assert operator is not None
        registered = {u.agency: u.nkey_public for u in data.registry.nats_users()}
        assert registered
        assert set(registered) == data.issued
        for agency, nkey in registered.items():
            keystore = json.loads((data.settings.keys_dir / f"{agency}.json").read_text())
            assert user_public_key(keystore["nats_seed"]) == nkey
            assert operator.is_own_user_jwt(keystore["nats_jwt"], agency, nkey)
        assert data.issue_nats_jwts() == 0
    finally:
        data.close()

    # Opened again (a restart): every keystore is read back; one holding another
    # operator's JWT gets this operator's, and only that one.
    path = tmp_path / "keys" / "gt-police.json"
    keystore = json.loads(path.read_text())
    foreign = NatsOperator(bytes(32)).agency_user_jwt(
        "gt-police", user_public_key(keystore["nats_seed"]), issued_at=1_800_000_000
    )
    write_private(path, json.dumps({**keystore, "nats_jwt": foreign}).encode())
    again = _open(tmp_path)
    try:
        assert again.issued == frozenset()
        assert again.issue_nats_jwts() == 1
        mended = json.loads(path.read_text())["nats_jwt"]
        assert again.nats_operator is not None
        assert again.nats_operator.is_own_user_jwt(
            mended, "gt-police", user_public_key(keystore["nats_seed"])
        )
        assert again.issue_nats_jwts() == 0
    finally:
        again.close()
