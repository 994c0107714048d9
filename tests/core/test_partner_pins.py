"""The pins a gateway agency keeps for partner links (``clients.partners``): read from the
line the sending region's operator prints, kept in a file, one per link, default deny."""

from __future__ import annotations

from pathlib import Path

import pytest

from clients.partners import (
    load_partner_pins,
    parse_directory_key_line,
    partner_pins_path,
    write_partner_pins,
)
from schemas.canonical import b64e
from schemas.errors import ConfigError
from schemas.keys import SigningKey

KEY = SigningKey.generate().verify_key
LINE = f"directory {KEY.kid} {b64e(KEY.public)}"


def test_a_pin_comes_from_the_printed_line_and_replaces_the_links_old_one(
    tmp_path: Path,
) -> None:
    path = partner_pins_path(tmp_path / "gateway.json")
    assert path.name == "gateway.partners.json"
    assert load_partner_pins(path).partners == ()  # no file: nothing pinned
    pin = parse_directory_key_line(LINE, link="eu-siena", region="istmo-sica")
    assert pin.verify_key().kid == KEY.kid
    write_partner_pins(path, load_partner_pins(path).with_pin(pin))
    other = SigningKey.generate().verify_key
    again = parse_directory_key_line(
        f"directory {other.kid} {b64e(other.public)}", link="eu-siena", region="istmo-a"
    )
    write_partner_pins(path, load_partner_pins(path).with_pin(again))
    pins = load_partner_pins(path)
    assert [(p.link, p.region, p.directory_kid) for p in pins.partners] == [
        ("eu-siena", "istmo-a", other.kid)
    ]
    assert pins.pin_of("other-link") is None


@pytest.mark.parametrize(
    "line",
    [
        f"eu-siena {KEY.kid} {b64e(KEY.public)}",  # the link key's line, not the directory's
        f"directory {KEY.kid}",
        f"directory sig-{'0' * 32} {b64e(KEY.public)}",  # the key does not match its id
        f"directory {KEY.kid} not-base64",
    ],
    # KEY is made at import: named ids keep collection the same in every xdist worker.
    ids=["link-key-line", "no-key", "key-not-its-id", "not-base64"],
)
def test_a_line_that_is_not_a_directory_key_is_refused(line: str) -> None:
    with pytest.raises(ConfigError):
        parse_directory_key_line(line, link="eu-siena", region="istmo-sica")


def test_a_damaged_pins_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gateway.partners.json"
    path.write_text('{"v": 1, "partners": [{"link": "eu-siena"}]}')
    with pytest.raises(ConfigError, match="not a partner pins file"):
        load_partner_pins(path)
