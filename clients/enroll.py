"""``istmo enroll``: an agency's first keys, made on its own machine.

The agency generates its Ed25519 signing key, HPKE encryption key and NATS user key here,
sends only the public halves to the broker with the one-time token an administrator gave
it (``POST /v1/enroll``, signed by the new keys), and keeps the private halves in a new
keystore protected by a passphrase (scrypt, AES-256-GCM), mode 0600. The keystore pins
the directory key the broker answered with, and remembers the NATS URL.

A keystore is never overwritten, and the file is reserved before the token is spent, so
a bad path cannot lose keys the broker has already registered.

    keystore = await enroll("https://broker.example", token)
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import secrets
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from clients.keystore import load_keystore, on_a_terminal
from clients.oauth import ApiError, ApiUnavailable
from schemas.canonical import b64e
from schemas.directory import open_excerpt
from schemas.enrolment import (
    EnrolmentAnswer,
    sign_enrolment,
    split_enrolment_token,
)
from schemas.envelope import parse_model
from schemas.errors import ConfigError, EnvelopeError, SignatureError
from schemas.keys import DEFAULT_KEM, EncryptionKey, KemName, SigningKey
from schemas.keystore import (
    KeystoreFile,
    StoredEncryptionKey,
    StoredSigningKey,
    protect_keystore,
)
from schemas.natskeys import new_user_seed

__all__ = [
    "EnrolmentRefused",
    "add_enroll_parser",
    "check_enrolment",
    "enroll",
    "write_new_keystore",
]

ENROLL_PATH = "/v1/enroll"
MIN_PASSPHRASE_CHARS = 12  # as for `istmo keys protect`
_MAX_ANSWER_BYTES = 64 * 1024
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class EnrolmentRefused(ApiError):
    """The broker refused the enrolment; ``code`` says why (``token_used``,
    ``token_expired``, ``invalid_token``, ``bad_key``, ...)."""

    default_code = "enrolment_refused"


def _problem(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        return "http_error", f"HTTP {response.status_code}"
    if not isinstance(body, dict):
        return "http_error", f"HTTP {response.status_code}"
    code = str(body.get("type", "")).rsplit("/", 1)[-1] or "http_error"
    return code[:60], str(body.get("detail", f"HTTP {response.status_code}"))[:300]


async def _send(
    client: httpx.AsyncClient | None, method: str, url: str, **kwargs: Any
) -> httpx.Response:
    try:
        if client is not None:
            return await client.request(method, url, **kwargs)
        # Enrolment reloads nats-server with the new account: ~10 s in a 3,500-agency region.
        async with httpx.AsyncClient(timeout=60.0) as own:
            return await own.request(method, url, **kwargs)
    except httpx.HTTPError as exc:
        raise ApiUnavailable(f"the Istmo API at {url} did not answer") from exc


async def _directory_kid(base: str, client: httpx.AsyncClient | None) -> str:
    """The kid of the key that signs the broker's directory (public, no token)."""
    response = await _send(client, "GET", base + "/v1/directory", params={"agency": "none"})
    if response.status_code != 200:
        code, detail = _problem(response)
        raise ApiError(detail, code=code, status=response.status_code)
    kid = response.json().get("kid")
    if not isinstance(kid, str):
        raise ConfigError(f"{base} did not answer with a signed directory")
    return kid


async def enroll(
    broker_url: str,
    token: str,
    *,
    directory_kid: str | None = None,
    kem: KemName = DEFAULT_KEM,
    client: httpx.AsyncClient | None = None,
    now: int | None = None,
    same_keys: KeystoreFile | None = None,
) -> KeystoreFile:
    """Enrol with a one-time token: make keys here, register their public halves.

    Args:
        broker_url: the broker's HTTP API, e.g. ``https://istmo.example``.
        token: the enrolment token (``istmo-enrol.<id>.<secret>``).
        directory_kid: the directory key id the administrator gave, if any: the broker
            must sign with that key (checked before the token is sent, and again after).
        kem: the encryption key's KEM.
        client: an ``httpx.AsyncClient`` to use (its base URL is ignored).
        now: epoch seconds.
        same_keys: a keystore this agency holds for another region: its current signing
            and encryption keys are registered here too, so that a partner link's gateway
            opens in this region what the other sealed for it (ADR 33); only the NATS key
            and the pinned directory key are new. None: new keys.

    Returns:
        The new keystore (not written anywhere yet): the private keys, the pinned
        directory key, and the NATS URL if the broker told it.

    Raises:
        ConfigError: the token is not an enrolment token, or the broker signs with
            another directory key than ``directory_kid``.
        EnrolmentRefused: the broker refused (``code`` says why).
        ApiUnavailable: the broker did not answer.
        SignatureError: the broker's answer does not match what was sent.
    """
    base = broker_url.rstrip("/")
    parts = split_enrolment_token(token.strip())
    if parts is None:
        raise ConfigError("that is not an enrolment token (istmo-enrol.<id>.<secret>)")
    if directory_kid is not None:
        served = await _directory_kid(base, client)
        if served != directory_kid:
            raise ConfigError(
                f"{base} signs its directory with {served}, not {directory_kid}: "
                "the wrong broker? nothing was sent"
            )
    now = int(time.time()) if now is None else now
    if same_keys is None:
        signing, encryption = SigningKey.generate(), EncryptionKey.generate(kem)
        signing_at = encryption_at = now
    else:
        stored = same_keys.encryption_keys[-1]
        kem = stored.kem
        signing = same_keys.signing_key()
        found = same_keys.encryption_key(stored.kid)
        if found is None:  # the keystore's own last key
            raise ConfigError("the keystore to reuse is damaged: no current encryption key")
        encryption = found
        signing_at = same_keys.signing_keys[-1].created_at
        encryption_at = stored.created_at
    nats_seed = new_user_seed()
    request = sign_enrolment(
        token_id=parts[0],
        issued_at=now,
        signing_key=signing,
        encryption=encryption.public_key,
        nats_seed=nats_seed,
    )
    body = {"token": token.strip(), "request": request.model_dump(mode="json")}
    response = await _send(client, "POST", base + ENROLL_PATH, json=body)
    if response.status_code != 201:
        code, detail = _problem(response)
        raise EnrolmentRefused(detail, code=code, status=response.status_code)
    try:
        answer = parse_model(
            EnrolmentAnswer, response.content, max_bytes=_MAX_ANSWER_BYTES, what="answer"
        )
    except EnvelopeError as exc:
        raise SignatureError(f"the broker's answer is not valid: {exc}") from exc
    # The broker registered exactly these keys, under a directory key that fits its id.
    if (answer.signing_kid, answer.encryption_kid, answer.nats_user) != (
        request.signing.kid,
        request.encryption.kid,
        request.nats_user,
    ):
        raise SignatureError("the broker registered other keys than the ones sent")
    if directory_kid is not None and answer.directory_key.kid != directory_kid:
        raise SignatureError(f"the broker answered with directory key {answer.directory_key.kid}")
    keystore = KeystoreFile(
        v=1,
        agency=answer.agency,
        signing_keys=(
            StoredSigningKey(
                kid=request.signing.kid, private=b64e(signing.private), created_at=signing_at
            ),
        ),
        encryption_keys=(
            StoredEncryptionKey(
                kid=request.encryption.kid,
                kem=kem,
                private=b64e(encryption.private),
                created_at=encryption_at,
            ),
        ),
        nats_seed=nats_seed,
        directory_key=answer.directory_key,
        nats_url=answer.nats_url,
        nats_jwt=answer.nats_jwt,
    )
    keystore.pinned_directory_key()  # raises if the key does not fit its id
    return keystore


async def check_enrolment(
    broker_url: str, keystore: KeystoreFile, *, client: httpx.AsyncClient | None = None
) -> None:
    """Check that the directory, signed by the pinned key, lists the keystore's keys.

    Raises:
        SignatureError: the directory is not signed by the pinned key, or lists other keys.
        ApiError, ApiUnavailable: the broker refused or did not answer.
    """
    base = broker_url.rstrip("/")
    response = await _send(
        client, "GET", base + "/v1/directory", params={"agency": keystore.agency}
    )
    if response.status_code != 200:
        code, detail = _problem(response)
        raise ApiError(detail, code=code, status=response.status_code)
    excerpt = open_excerpt(response.content, keystore.pinned_directory_key())
    record = next((a for a in excerpt.agencies if a.id == keystore.agency), None)
    if record is None:
        raise SignatureError(f"the directory does not list {keystore.agency} yet")
    signing = {k.kid for k in record.signing_keys}
    current = record.encryption_key.kid if record.encryption_key else None
    if keystore.signing_keys[-1].kid not in signing or current != keystore.encryption_keys[-1].kid:
        raise SignatureError(f"the directory lists other keys for {keystore.agency}")


# ---------------------------------------------------------------------- the keystore file
def _reserve(path: Path) -> tuple[int, Path]:
    """Check ``path`` is free and open a private temporary file beside it."""
    if path.exists() or path.is_symlink():
        raise ConfigError(f"{path} exists; a keystore is never overwritten: choose another --out")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"no directory {parent} for the keystore")
    tmp = parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot write in {parent}: {exc.strerror}") from exc
    os.fchmod(fd, 0o600)
    return fd, tmp


def _commit(fd: int, tmp: Path, path: Path, data: bytes) -> None:
    """Write ``data`` to the reserved ``tmp``, then give it the name ``path``, which must
    still be free (a hard link fails rather than replace a file).

    Raises:
        ConfigError: it could not be written (the message says where it is, if anywhere).
    """
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"could not write the keystore beside {path}: {exc.strerror}") from exc
    try:
        os.link(tmp, path)
    except FileExistsError as exc:
        raise ConfigError(f"{path} appeared meanwhile; your new keystore is {tmp}") from exc
    except OSError:
        # No hard links on this file system: rename, unless the name was taken meanwhile.
        if path.exists() or path.is_symlink():
            raise ConfigError(f"{path} appeared meanwhile; your new keystore is {tmp}") from None
        os.rename(tmp, path)
        return
    tmp.unlink()


def write_new_keystore(path: Path, keystore: KeystoreFile, passphrase: str | None) -> None:
    """Write ``keystore`` to a new file ``path`` (mode 0600, never overwriting),
    protected by ``passphrase`` unless it is None.

    Raises:
        ConfigError: ``path`` exists or cannot be written.
    """
    data = _keystore_bytes(keystore, passphrase)
    fd, tmp = _reserve(path)
    _commit(fd, tmp, path, data)


def _keystore_bytes(keystore: KeystoreFile, passphrase: str | None) -> bytes:
    if passphrase is None:
        return keystore.model_dump_json(indent=2).encode()
    return protect_keystore(keystore, passphrase).model_dump_json(indent=2).encode()


# ---------------------------------------------------------------------- the command
def _new_passphrase(args: argparse.Namespace, ask: Callable[[str], str]) -> str | None:
    """The new keystore's passphrase: from --passphrase-file, or asked twice."""
    if args.no_passphrase:
        if args.passphrase_file:
            raise ConfigError("give --passphrase-file or --no-passphrase, not both")
        return None
    if args.passphrase_file:
        try:
            with open(args.passphrase_file, encoding="utf-8") as f:
                secret = f.readline().rstrip("\n")
        except OSError as exc:
            raise ConfigError(f"cannot read a passphrase from {args.passphrase_file}") from exc
    elif on_a_terminal():
        secret = ask("passphrase for the new keystore: ")
        if secret != ask("again: "):
            raise ConfigError("the two passphrases differ; nothing was sent")
    else:
        raise ConfigError(
            "the keystore needs a passphrase: run on a terminal, or give --passphrase-file "
            "(--no-passphrase writes it unprotected, for tests and demos only)"
        )
    if len(secret) < MIN_PASSPHRASE_CHARS:
        raise ConfigError(f"use a passphrase of at least {MIN_PASSPHRASE_CHARS} characters")
    return secret


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--broker {url[:80]!r}: give the API's URL, like https://istmo.example")
    if parts.scheme == "http" and parts.hostname not in _LOOPBACK:
        print(
            "istmo: warning: the token travels in clear over http; use https",
            file=sys.stderr,
        )
    return url.rstrip("/")


def _enroll_command(args: argparse.Namespace) -> int:
    base = _check_url(args.broker)
    out = Path(args.out)
    token = args.token.strip() if args.token else _read_token(args)
    if split_enrolment_token(token) is None:
        raise ConfigError("that is not an enrolment token (istmo-enrol.<id>.<secret>)")
    # Everything that can fail locally fails before the token is spent.
    same_keys = None
    if args.same_keys_as is not None:
        same_keys = load_keystore(Path(args.same_keys_as), lambda: getpass.getpass(
            f"passphrase of {args.same_keys_as}: "
        ))  # fmt: skip
    fd, tmp = _reserve(out)
    try:
        secret = _new_passphrase(args, getpass.getpass)
        keystore = asyncio.run(
            enroll(base, token, directory_kid=args.directory_kid, same_keys=same_keys)
        )
        data = _keystore_bytes(keystore, secret)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    _commit(fd, tmp, out, data)
    mode = stat.S_IMODE(out.stat().st_mode)
    protection = "protected by your passphrase" if secret else "NOT protected (--no-passphrase)"
    print(f"enrolled as {keystore.agency}")
    print(f"keystore  {out} (mode {mode:o}, {protection})")
    print(f"directory key pinned: {keystore.directory_key.kid}")
    print(f"NATS      {keystore.nats_url or 'not told by the broker: pass --nats-url'}")
    try:
        asyncio.run(check_enrolment(base, keystore))
        print("checked: the signed directory lists your keys")
    except (ApiError, ApiUnavailable, EnvelopeError) as exc:
        print(f"istmo: warning: could not check the directory yet: {exc}", file=sys.stderr)
    print(f"next: istmo receive --as {out}")
    return 0


def _read_token(args: argparse.Namespace) -> str:
    if args.token_file is None:
        raise ConfigError("give --token TOKEN or --token-file FILE")
    try:
        with open(args.token_file, encoding="utf-8") as f:
            return f.readline().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the token from {args.token_file}") from exc


def add_enroll_parser(sub: Any) -> None:
    """Add ``enroll`` to the ``istmo`` sub-command parser."""
    p = sub.add_parser(
        "enroll",
        help="enrol this agency with a one-time token: make its keys here",
        description=(
            "Generate this agency's signing, encryption and NATS keys on this machine, "
            "register their public halves with the broker using the one-time token an "
            "administrator gave you, and write the private halves to a new keystore "
            "protected by a passphrase (mode 0600). The keystore pins the broker's "
            "directory key and remembers its NATS URL."
        ),
    )
    p.add_argument("--broker", required=True, metavar="URL", help="the broker's HTTP API URL")
    token = p.add_mutually_exclusive_group(required=True)
    token.add_argument("--token", help="the one-time enrolment token")
    token.add_argument("--token-file", help="read the token from this file (first line)")
    p.add_argument("--out", required=True, metavar="KEYSTORE", help="the new keystore file")
    p.add_argument("--passphrase-file", help="read the new passphrase from this file")
    p.add_argument(
        "--no-passphrase",
        action="store_true",
        help="write the keystore unprotected (tests and demos only)",
    )
    p.add_argument(
        "--directory-kid",
        metavar="KID",
        help="the directory key id your administrator gave you; refuse any other broker",
    )
    p.add_argument(
        "--same-keys-as",
        metavar="KEYSTORE",
        help="register this keystore's signing and encryption keys instead of new ones: a "
        "partner link's gateway, enrolled in the sending region with KEYSTORE, enrols so "
        "in its own region to open what crossed (the new keystore has its own NATS key)",
    )
    p.set_defaults(func=_enroll_command)
