"""Partner regions an agency opens bulletins from (ADR 33, "Opening on the partner's side").

A bulletin that crossed a partner link reaches this region's gateway agency with the
sending region's signed directory record of its originator (``schemas.partner_delivery``).
This region's directory does not list that originator, so its signing key can only come
from that record, and the record is only as good as the key that signed it: the sending
region's directory key, which this agency's operator **pins** here, per link, from what
the sending region's operator printed (``istmo federation key --directory``). Neither the
wire nor this region's broker can add a pin: a delivery from a link nobody pinned is not
opened.

The pins are a small JSON file, by default beside the keystore
(``<keystore>.partners.json``, written by ``istmo partner pin``)::

    {"v": 1, "partners": [{"link": "eu-siena", "region": "istmo-sica",
      "directory_kid": "sig-...", "directory_public": "..."}]}

``partner_signing_key`` is the check (pure); ``clients.sdk`` runs it for a delivery with
the link's headers, and refuses a record naming an agency of this region's own directory.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from schemas.canonical import b64d, b64e
from schemas.directory import AgencyRecord, SignedExcerpt, SigningKeyRecord, verify_excerpt
from schemas.envelope import Envelope, Kid
from schemas.errors import ConfigError, EnvelopeError, SignatureError
from schemas.ids import AGENCY_ID_PATTERN
from schemas.keys import VerifyKey

__all__ = [
    "MAX_PARTNERS",
    "PartnerPin",
    "PartnerPins",
    "PartnerSender",
    "load_partner_pins",
    "not_pinned",
    "parse_directory_key_line",
    "partner_pins_path",
    "partner_signing_key",
    "write_partner_pins",
]

MAX_PARTNERS = 64
_MAX_FILE_BYTES = 64 * 1024
_Token = Annotated[str, StringConstraints(pattern=AGENCY_ID_PATTERN)]


class PartnerPin(BaseModel):
    """One link's partner region and its directory key, as this agency's operator pinned
    them.

    Attributes:
        link: the link's name (the same on both sides: ``eu-siena``).
        region: what this agency calls the sending region (shown beside its originators).
        directory_kid: the sending region's directory key id.
        directory_public: its public half (base64).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    link: _Token
    region: _Token
    directory_kid: Kid
    directory_public: Annotated[str, StringConstraints(min_length=44, max_length=44)]

    def verify_key(self) -> VerifyKey:
        """The pinned key.

        Raises:
            ConfigError: the public half does not decode or does not match its id.
        """
        try:
            key = VerifyKey(b64d(self.directory_public, field="directory key", max_bytes=32))
        except (EnvelopeError, ValueError) as exc:
            raise ConfigError(f"the pin of link {self.link} is damaged: pin it again") from exc
        if key.kid != self.directory_kid:
            raise ConfigError(f"the pin of link {self.link}: its key does not match its id")
        return key


class PartnerPins(BaseModel):
    """Every link this agency opens bulletins from."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    v: Literal[1] = 1
    partners: tuple[PartnerPin, ...] = Field(default=(), max_length=MAX_PARTNERS)

    def pin_of(self, link: str) -> PartnerPin | None:
        """The pin of ``link``, if any."""
        return next((p for p in self.partners if p.link == link), None)

    def with_pin(self, pin: PartnerPin) -> PartnerPins:
        """These pins with ``pin`` in place of the link's old one, if any."""
        rest = tuple(p for p in self.partners if p.link != pin.link)
        return PartnerPins(partners=(*rest, pin))


def partner_pins_path(keystore_path: Path) -> Path:
    """Where an agency's pins are kept by default: beside its keystore."""
    return keystore_path.with_name(keystore_path.stem + ".partners.json")


def load_partner_pins(path: Path) -> PartnerPins:
    """The pins in ``path``; none if it does not exist (no partner is trusted).

    Raises:
        ConfigError: it cannot be read, or is not a pins file.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return PartnerPins()
    except OSError as exc:
        raise ConfigError(f"cannot read the partner pins {path}") from exc
    if len(raw) > _MAX_FILE_BYTES:
        raise ConfigError(f"{path} is larger than a partner pins file can be")
    try:
        return PartnerPins.model_validate(json.loads(raw), strict=False)
    except (ValueError, ValidationError) as exc:
        raise ConfigError(
            f"{path} is not a partner pins file: pin again with `istmo partner pin`"
        ) from exc


def write_partner_pins(path: Path, pins: PartnerPins) -> None:
    """Write ``pins`` to ``path`` atomically (public keys only: mode 0644)."""
    text = json.dumps(pins.model_dump(mode="json"), indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def parse_directory_key_line(line: str, *, link: str, region: str) -> PartnerPin:
    """A pin from the line ``istmo federation key --directory`` prints on the sending
    side: ``directory KID PUBLIC``.

    Raises:
        ConfigError: the line is not one, or its key does not match its id.
    """
    parts = line.split()
    if len(parts) != 3 or parts[0] != "directory":
        raise ConfigError(
            "give the directory key as the sending region's `istmo federation key "
            '--directory` prints it: "directory sig-... KEY"'
        )
    try:
        key = VerifyKey(b64d(parts[2], field="directory key", max_bytes=32))
        pin = PartnerPin(
            link=link, region=region, directory_kid=parts[1], directory_public=b64e(key.public)
        )
    except (EnvelopeError, ValueError, ValidationError) as exc:
        raise ConfigError("that directory key, link or region name is not valid") from exc
    pin.verify_key()
    return pin


def not_pinned(link: str) -> ConfigError:
    """The refusal of a delivery from ``link`` while this agency pins no key for it."""
    return ConfigError(
        f"a bulletin crossed partner link {link}, and this agency pins no directory key "
        "for that link: not opened (it stays with the broker)",
        code="partner_not_pinned",
        hint=f"ask the sending region's operator for `istmo federation key --directory`, "
        f'then run `istmo partner pin --link {link} --region NAME --directory-key "directory '
        'sig-... KEY"` and receive again',
    )


@dataclass(frozen=True)
class PartnerSender:
    """A crossed bulletin's originator as its region's pinned directory lists it.

    Attributes:
        record: the originator's record, signed by the pinned key.
        key: the signing key the envelope names, as the record lists it (None: not listed).
        region: the pin's name for the sending region.
    """

    record: AgencyRecord
    key: SigningKeyRecord | None
    region: str


def partner_signing_key(
    env: Envelope, link: str, signed: SignedExcerpt, pins: PartnerPins
) -> PartnerSender:
    """Check a crossed delivery's record against the pinned key of ``link``.

    Steps, each refusing:
      1. this agency pins a directory key for ``link`` (``partner_not_pinned``: stays);
      2. the record is signed by that key: another key id (``partner_untrusted``: a wrong
         pin, or the partner changed its key: stays), or the pinned id with a signature
         that does not verify (``partner_record_forged``);
      3. it lists the envelope's originator, active (``partner_unknown_originator``).
    The originator's signature, and whether the key was revoked, are
    ``clients.opening.open_delivery``'s, with the key returned here. That the originator
    is not an agency of this region is the caller's (it asks this region's directory).

    Raises:
        ConfigError: step 1, and a damaged pin.
        SignatureError: steps 2 and 3.
    """
    pin = pins.pin_of(link)
    if pin is None:  # 1
        raise not_pinned(link)
    pinned = pin.verify_key()
    if signed.kid != pinned.kid:  # 2
        raise SignatureError(
            f"a bulletin that crossed link {link} came with a record signed by {signed.kid}, "
            f"not by the directory key pinned for that link ({pinned.kid}): not opened",
            code="partner_untrusted",
            hint="if the sending region changed its directory key, pin the new one "
            "(`istmo partner pin`); if not, tell both regions' operators",
        )
    try:
        excerpt = verify_excerpt(signed, pinned)
    except (SignatureError, EnvelopeError) as exc:
        raise SignatureError(
            f"the record of a bulletin that crossed link {link} does not verify",
            code="partner_record_forged",
        ) from exc
    originator = env.header.originator
    record = next((a for a in excerpt.agencies if a.id == originator), None)  # 3
    if record is None or record.status != "active":
        raise SignatureError(
            f"the partner's record does not list {originator} as active",
            code="partner_unknown_originator",
        )
    key = next((k for k in record.signing_keys if k.kid == env.sig.kid), None)
    return PartnerSender(record, key, pin.region)
