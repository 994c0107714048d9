"""What the broker's NATS operator signs (pure; ``broker.bus.natsauth``, ADR 0013), and the
config that trusts it (``broker.bus.natsconf``).

tests/integration/test_nats_confinement.py runs the confinement tests against a server
holding exactly these JWTs; here, their content is pinned.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from broker.bus.grants import (
    RELAY_SERVICE_EXPORTS,
    agency_publish_subjects,
    agency_services,
    agency_subscribe_subjects,
)
from broker.bus.natsauth import AGENCY_SHAPE, AgencyAccount, NatsOperator
from broker.bus.natsconf import AgencyUser, NatsLayout, render_accounts, render_config
from broker.bus.natsjwt import decode_jwt
from schemas.errors import EnvelopeError
from schemas.natskeys import new_user_seed, user_public_key
from schemas.subjects import ANNOUNCE_SUBJECT

OPERATOR = NatsOperator(bytes(range(32)))
GT_KEY = user_public_key(new_user_seed())
NOW = 1_800_000_000
AGENCIES = ("gt-police", "jm-justice", "rc-drugs", "abc", "urgent-xyz", "deliver-xyz")


def matches(subject: str, pattern: str) -> bool:
    """NATS subject matching: ``*`` is one token, a final ``>`` one or more."""
    tokens, wanted = subject.split("."), pattern.split(".")
    for i, token in enumerate(wanted):
        if token == ">":
            return len(tokens) > i
        if i >= len(tokens) or token not in ("*", tokens[i]):
            return False
    return len(tokens) == len(wanted)


@pytest.mark.parametrize("agency", AGENCIES)
def test_each_agency_service_falls_in_exactly_one_export_of_istmo(agency: str) -> None:
    for service in agency_services(agency):
        covering = [e for e in RELAY_SERVICE_EXPORTS if matches(service.subject, e.subject)]
        assert len(covering) == 1, service.subject
        assert covering[0].streamed == service.streamed, service.subject


def test_istmo_exports_every_service_once_and_never_names_an_agency() -> None:
    claims = decode_jwt(OPERATOR.relay_account_jwt(issued_at=NOW), kind="account")

    assert (claims.issuer, claims.subject, claims.name) == (
        OPERATOR.operator_public,
        OPERATOR.relay_account,
        "ISTMO",
    )
    services = [e for e in claims.nats["exports"] if e["type"] == "service"]
    assert [e["subject"] for e in services] == [e.subject for e in RELAY_SERVICE_EXPORTS]
    assert [e.get("response_type") for e in services] == [
        "Stream" if e.streamed else None for e in RELAY_SERVICE_EXPORTS
    ]
    streams = [e for e in claims.nats["exports"] if e["type"] == "stream"]
    assert streams == [{"name": ANNOUNCE_SUBJECT, "subject": ANNOUNCE_SUBJECT, "type": "stream"}]
    limits = claims.nats["limits"]
    assert (limits["disk_storage"], limits["mem_storage"]) == (-1, -1)  # JetStream is here
    # The same whatever the directory holds: no agency's id or key appears in it.
    assert OPERATOR.relay_account_jwt(issued_at=NOW) == OPERATOR.relay_account_jwt(issued_at=NOW)


@pytest.mark.parametrize("agency", AGENCIES)
def test_an_agency_account_imports_its_own_services_from_istmo(agency: str) -> None:
    account = OPERATOR.agency_account(agency)
    claims = decode_jwt(
        OPERATOR.agency_account_jwt(AgencyAccount(agency, GT_KEY, True), issued_at=NOW),
        kind="account",
    )

    assert (claims.issuer, claims.subject, claims.name) == (
        OPERATOR.operator_public,
        account,
        agency,
    )
    imports = claims.nats["imports"]
    services = [i for i in imports if i["type"] == "service"]
    assert services == [
        {"subject": subject, "account": OPERATOR.relay_account, "type": "service"}
        for subject in agency_publish_subjects(agency)
    ]
    assert [i for i in imports if i["type"] == "stream"] == [
        {"subject": ANNOUNCE_SUBJECT, "account": OPERATOR.relay_account, "type": "stream"}
    ]
    assert claims.nats["default_permissions"] == {
        "pub": {"allow": list(agency_publish_subjects(agency))},
        "sub": {"allow": list(agency_subscribe_subjects(agency))},
    }
    limits = claims.nats["limits"]
    assert "disk_storage" not in limits  # no JetStream of its own
    assert limits["exports"] == 0
    assert claims.nats["tags"] == [AGENCY_SHAPE]


def test_a_stored_account_is_current_only_if_it_admits_whom_the_registry_says() -> None:
    active = AgencyAccount("gt-police", GT_KEY, True)
    claims = decode_jwt(OPERATOR.agency_account_jwt(active, issued_at=NOW))
    current = OPERATOR.agency_account_is_current

    assert current(claims, active)
    assert not current(claims, AgencyAccount("gt-police", GT_KEY, False))
    other_key = user_public_key(new_user_seed())
    assert not current(claims, AgencyAccount("gt-police", other_key, True))
    assert not current(claims, AgencyAccount("jm-police", GT_KEY, True))
    assert not NatsOperator(bytes(32)).agency_account_is_current(claims, active)
    # Issued by an Istmo that granted something else (another tag): issued again.
    retagged = dataclasses.replace(claims, nats={**claims.nats, "tags": ["istmo-grants-old"]})
    assert not current(retagged, active)


def test_a_user_jwt_is_known_as_this_operators_own_for_its_agency_and_key() -> None:
    token = OPERATOR.agency_user_jwt("gt-police", GT_KEY, issued_at=NOW)

    assert OPERATOR.is_own_user_jwt(token, "gt-police", GT_KEY)
    assert not OPERATOR.is_own_user_jwt(token, "jm-police", GT_KEY)
    assert not OPERATOR.is_own_user_jwt(token, "gt-police", user_public_key(new_user_seed()))
    assert not NatsOperator(bytes(32)).is_own_user_jwt(token, "gt-police", GT_KEY)


def test_the_account_lists_the_signer_of_its_current_key_only_while_active() -> None:
    def signers(account: AgencyAccount) -> list[str]:
        token = OPERATOR.agency_account_jwt(account, issued_at=NOW)
        return list(decode_jwt(token).nats.get("signing_keys", []))

    user = decode_jwt(OPERATOR.agency_user_jwt("gt-police", GT_KEY, issued_at=NOW), kind="user")
    other_key = user_public_key(new_user_seed())

    assert signers(AgencyAccount("gt-police", GT_KEY, True)) == [user.issuer]
    assert signers(AgencyAccount("gt-police", GT_KEY, False)) == []  # suspended, revoked
    assert signers(AgencyAccount("gt-police", None, True)) == []  # no key enrolled
    assert signers(AgencyAccount("gt-police", other_key, True)) not in ([], [user.issuer])
    # Another agency holding the same key (it cannot: keys are unique) would not share it.
    assert signers(AgencyAccount("jm-police", GT_KEY, True)) != [user.issuer]


def test_remembered_signers_are_those_derived_afresh_and_follow_a_new_key() -> None:
    """The operator keeps each (agency, key)'s signer once derived (a start lists and
    checks thousands): what it lists is what an operator of the same secret derives
    afresh, and a re-keyed agency's account admits its new key's JWTs, not the old."""
    warm = NatsOperator(bytes(range(32)))
    old_jwt = warm.agency_user_jwt("gt-police", GT_KEY, issued_at=NOW)
    new_key = user_public_key(new_user_seed())

    def signers(operator: NatsOperator, key: str) -> list[str]:
        token = operator.agency_account_jwt(AgencyAccount("gt-police", key, True), issued_at=NOW)
        return list(decode_jwt(token).nats["signing_keys"])

    for key in (GT_KEY, new_key, GT_KEY):  # remembered, then a new key, then the old again
        assert signers(warm, key) == signers(NatsOperator(bytes(range(32))), key)
    rekeyed = decode_jwt(
        warm.agency_account_jwt(AgencyAccount("gt-police", new_key, True), issued_at=NOW)
    )
    assert decode_jwt(old_jwt, kind="user").issuer not in rekeyed.nats["signing_keys"]
    assert not warm.is_own_user_jwt(old_jwt, "gt-police", new_key)
    assert warm.is_own_user_jwt(old_jwt, "gt-police", GT_KEY)
    assert not warm.agency_account_is_current(rekeyed, AgencyAccount("gt-police", GT_KEY, True))


def test_an_agency_user_jwt_binds_its_nkey_to_its_account_and_nothing_more() -> None:
    user = decode_jwt(OPERATOR.agency_user_jwt("gt-police", GT_KEY, issued_at=NOW), kind="user")

    assert user.subject == GT_KEY
    assert user.name == "gt-police"
    # No permissions of its own: the account's defaults apply, and change with it.
    assert dict(user.nats) == {
        "issuer_account": OPERATOR.agency_account("gt-police"),
        "subs": -1,
        "data": -1,
        "payload": -1,
    }


def test_the_broker_users_belong_to_istmo_and_the_system_account() -> None:
    relay_key = user_public_key(new_user_seed())
    relay = decode_jwt(OPERATOR.relay_user_jwt(relay_key, issued_at=NOW), kind="user")
    system = decode_jwt(OPERATOR.system_user_jwt(issued_at=NOW), kind="user")
    operator = decode_jwt(OPERATOR.operator_jwt(issued_at=NOW), kind="operator")

    assert (relay.issuer, relay.subject) == (OPERATOR.relay_account, relay_key)
    assert (system.issuer, system.subject) == (
        OPERATOR.system_account,
        user_public_key(OPERATOR.system_user_seed),
    )
    assert operator.issuer == operator.subject == OPERATOR.operator_public
    assert operator.nats["system_account"] == OPERATOR.system_account


def test_every_key_is_the_masters_own() -> None:
    again = NatsOperator(bytes(range(32)))
    other = NatsOperator(bytes(32))
    assert again.operator_public == OPERATOR.operator_public
    assert again.agency_account("gt-police") == OPERATOR.agency_account("gt-police")
    assert other.operator_public != OPERATOR.operator_public
    keys = {
        OPERATOR.operator_public,
        OPERATOR.system_account,
        OPERATOR.relay_account,
        *(OPERATOR.agency_account(a) for a in AGENCIES),
    }
    assert len(keys) == 3 + len(AGENCIES)
    assert "bytes" not in repr(OPERATOR)
    with pytest.raises(EnvelopeError):
        OPERATOR.agency_account("Not An Id")


def layout(tmp_path: Path, **changes: object) -> NatsLayout:
    base: dict[str, object] = {
        "port": 4222,
        "http_port": 8222,
        "store_dir": tmp_path / "js",
        "relay_nkey_public": user_public_key(new_user_seed()),
        "agencies": (),
        "operator": OPERATOR.trust(tmp_path / "resolver", issued_at=NOW),
    }
    return NatsLayout(**{**base, **changes})  # type: ignore[arg-type]  # the fields above


def test_an_operator_config_trusts_the_operator_and_lists_no_accounts(tmp_path: Path) -> None:
    text = render_config(layout(tmp_path))

    assert f'operator: "{OPERATOR.operator_jwt(issued_at=NOW)}"' in text
    assert f'system_account: "{OPERATOR.system_account}"' in text
    assert "  type: full\n" in text
    assert f'  dir: "{tmp_path / "resolver"}"' in text
    assert f"  {OPERATOR.relay_account}: " in text
    assert "accounts {" not in text
    with pytest.raises(ValueError, match="config block"):
        render_accounts(layout(tmp_path))


def test_an_operator_config_refuses_agency_users_and_malformed_trust(tmp_path: Path) -> None:
    agency = AgencyUser("gt-police", GT_KEY)
    with pytest.raises(ValueError, match="account JWTs"):
        render_config(layout(tmp_path, agencies=(agency,)))
    trust = OPERATOR.trust(tmp_path, issued_at=NOW)
    for broken, message in (
        ({"operator_jwt": "not a jwt"}, "not a JWT"),
        ({"system_account": "UABC"}, "account nkey"),
        ({"preload": trust.preload[1:]}, "must be preloaded"),
        ({"sync_interval_s": 0}, "positive"),
    ):
        changed = type(trust)(**{**trust.__dict__, **broken})
        with pytest.raises(ValueError, match=message):
            render_config(layout(tmp_path, operator=changed))
