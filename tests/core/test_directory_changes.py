"""What a relay answers to "whose records changed since the version I hold?"
(``broker.directory.changes``, ADR 14), and the signature on the answer."""

from __future__ import annotations

import pytest

from broker.directory.changes import ChangeLog
from schemas.canonical import b64e, canonical_json
from schemas.directory import (
    MAX_CHANGED,
    DirectoryChanges,
    directory_version,
    sign_changes,
    verify_changes,
)
from schemas.errors import SignatureError
from schemas.keys import SigningKey

KEY = SigningKey(bytes(range(32)))


def v(serial: int) -> str:
    return directory_version(serial, "c" * 32)


# Changes 4..9 of a journal whose older rows were dropped: complete after serial 3.
LOG = ChangeLog(
    serial=9,
    entries=((4, "gt-police"), (5, "hn-police"), (5, "sv-police"), (7, "gt-police"), (9, "x-y")),
    complete_after=3,
)


@pytest.mark.parametrize(
    ("since", "changed"),
    [
        pytest.param(v(9), (), id="current"),
        pytest.param(v(12), (), id="newer-than-this-relay"),
        pytest.param(v(8), ("x-y",), id="one"),
        pytest.param(v(5), ("gt-police", "x-y"), id="after-5"),
        pytest.param(v(4), ("gt-police", "hn-police", "sv-police", "x-y"), id="after-4"),
        pytest.param(v(3), ("gt-police", "hn-police", "sv-police", "x-y"), id="all-kept"),
        pytest.param(v(2), None, id="older-than-the-log"),
        pytest.param("a" * 32, None, id="no-serial"),
    ],
)
def test_the_agencies_changed_since_a_version(since: str, changed: tuple[str, ...] | None) -> None:
    assert LOG.changed_since(since) == changed


def test_entries_past_the_view_are_not_told() -> None:
    log = ChangeLog(serial=5, entries=((4, "gt-police"), (6, "hn-police")), complete_after=0)
    assert log.changed_since(v(3)) == ("gt-police",)


def test_too_many_changes_say_fetch_everything() -> None:
    entries = tuple((n, f"a{n:05d}-x") for n in range(1, MAX_CHANGED + 2))
    log = ChangeLog(serial=MAX_CHANGED + 1, entries=entries, complete_after=0)
    assert log.changed_since(v(0)) is None
    assert log.changed_since(v(1)) is not None  # exactly MAX_CHANGED


def test_a_change_list_is_signed_under_its_own_domain() -> None:
    answer = DirectoryChanges(
        v=1, since=v(3), directory_version=v(9), issued_at=1, changed=("gt-police",)
    )
    signed = sign_changes(answer, KEY)
    assert verify_changes(signed, KEY.verify_key) == answer
    tampered = signed.model_copy(update={"changes": answer.model_copy(update={"changed": ()})})
    with pytest.raises(SignatureError):
        verify_changes(tampered, KEY.verify_key)
    with pytest.raises(SignatureError) as other:
        verify_changes(signed, SigningKey.generate().verify_key)
    assert other.value.code == "directory_untrusted"
    # The same document signed under the excerpts' domain is not a change list.
    as_excerpt = KEY.sign(
        b"istmo/v1/directory\x00" + canonical_json(answer.model_dump(mode="json"))
    )
    with pytest.raises(SignatureError):
        verify_changes(signed.model_copy(update={"sig": b64e(as_excerpt)}), KEY.verify_key)
