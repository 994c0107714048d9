"""The audit endpoints of the broker's HTTP API, as an auditor's token reads them, and the
errors of a log that the answers contradict.

Nothing the server says is trusted here beyond its shape: ``AuditApi`` returns what was
served (bytes, hashes, lists of heads), and ``clients.log_verifier`` and
``clients.log_monitor`` check it. Uses only ``schemas`` and ``clients``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from clients.oauth import IstmoHttp, TokenRefused, waiting_out_rate_limits
from schemas.canonical import b64d
from schemas.errors import ConfigError, EnvelopeError, IstmoError
from schemas.keys import VerifyKey
from schemas.treehead import SignedTreeHead, parse_signed_tree_head

__all__ = [
    "DEFAULT_ORIGIN",
    "PAGE",
    "AuditApi",
    "LogAltered",
    "RemoteLogError",
    "parse_hash",
    "pinned_key",
    "read_log_key",
]

DEFAULT_ORIGIN = "istmo.local/audit"  # the log's name in its tree heads (broker.audit.sequencer)
PAGE = 1000  # entries and heads per request: the API's cap


class LogAltered(IstmoError):
    """The log served contradicts its own signed tree heads or the pinned key."""

    default_code = "log_corrupt"


class RemoteLogError(IstmoError):
    """The server's answer is not what the audit API serves (malformed, or missing)."""

    default_code = "bad_answer"


def read_log_key(path: Path) -> VerifyKey:
    """The log's public key from a ``log.pub`` file (base64 of 32 bytes, one line).

    Raises:
        ConfigError: unreadable or not an Ed25519 public key.
    """
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the log key {path}") from exc
    try:
        return VerifyKey(b64d(text, field="--log-key", max_bytes=32))
    except EnvelopeError as exc:
        raise ConfigError(f"{path} is not a log key: {exc}") from exc


def parse_hash(text: object, what: str) -> bytes:
    """A 32-byte hash the server sent in base64 (``RemoteLogError`` if it is not one)."""
    if not isinstance(text, str):
        raise RemoteLogError(f"the server sent no {what}")
    try:
        return b64d(text, field=what, max_bytes=32)
    except EnvelopeError as exc:
        raise RemoteLogError(f"the server sent a malformed {what}") from exc


class AuditApi:
    """The audit endpoints, as the auditor's token allows; waits out rate limits."""

    def __init__(self, http: IstmoHttp) -> None:
        self.http = http
        self.base_url = http.base_url

    async def _get(self, path: str, params: dict[str, Any] | None = None) -> httpx.Response:
        try:
            return await waiting_out_rate_limits(
                lambda: self.http.request("GET", path, params=params)
            )
        except TokenRefused as exc:
            if exc.code != "invalid_scope":
                raise
            raise TokenRefused(
                f"{exc}: reading the audit log needs an auditor's keystore (scope audit:read)",
                code=exc.code,
                status=exc.status,
            ) from exc

    async def json(self, path: str, **params: Any) -> Any:
        """GET ``path``: the JSON body of a 200, ``ApiError`` otherwise."""
        response = await self._get(path, params or None)
        try:
            return IstmoHttp._json(response)  # ApiError unless 200
        except ValueError as exc:
            raise RemoteLogError(f"the answer to {path} is not JSON") from exc

    async def raw(self, path: str) -> bytes | None:
        """GET ``path``: the body of a 200 as bytes, None on 404, ``ApiError`` otherwise."""
        response = await self._get(path)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            IstmoHttp._json(response)  # raises the problem as ApiError
        return response.content

    async def log_key(self) -> tuple[VerifyKey, str]:
        """The key the server names, and the log's origin."""
        body = await self.json("/v1/audit/log-key")
        try:
            key = VerifyKey(b64d(str(body["public"]), field="log key", max_bytes=32))
            kid, origin = str(body["kid"]), str(body["origin"])
        except (KeyError, TypeError, EnvelopeError) as exc:
            raise RemoteLogError("the server's log key is malformed") from exc
        if key.kid != kid:
            raise RemoteLogError(f"the server's log key is not the key {kid[:40]} it names")
        return key, origin

    async def latest_head(self) -> bytes | None:
        return await self.raw("/v1/audit/tree-heads/latest")

    async def heads(self, up_to: int) -> list[SignedTreeHead]:
        """Every signed head up to size ``up_to``, smallest first (sizes as served)."""
        out: list[SignedTreeHead] = []
        after = -1
        while True:
            body = await self.json("/v1/audit/tree-heads", after_size=after, limit=PAGE)
            try:
                docs = list(body["heads"])
                more = body["next_after_size"]
            except (KeyError, TypeError) as exc:
                raise RemoteLogError("the server's list of tree heads is malformed") from exc
            for doc in docs:
                try:
                    sth = parse_signed_tree_head(json.dumps(doc).encode())
                except EnvelopeError as exc:
                    raise RemoteLogError(f"a listed tree head is malformed: {exc}") from exc
                if sth.head.tree_size > up_to:
                    return out
                if out and sth.head.tree_size <= out[-1].head.tree_size:
                    raise RemoteLogError("the server lists tree heads out of order")
                out.append(sth)
            if more is None or not docs:
                return out
            after = out[-1].head.tree_size

    async def entries(self, after_index: int) -> list[dict[str, Any]]:
        body = await self.json("/v1/audit/entries", after_index=after_index, limit=PAGE)
        try:
            return list(body["entries"])
        except (KeyError, TypeError) as exc:
            raise RemoteLogError("the server's page of entries is malformed") from exc

    async def inclusion(self, index: int, tree_size: int) -> list[bytes]:
        body = await self.json("/v1/audit/proofs/inclusion", index=index, tree_size=tree_size)
        return _proof(body)

    async def consistency(self, old: int, new: int) -> list[bytes]:
        body = await self.json("/v1/audit/proofs/consistency", old=old, new=new)
        return _proof(body)


def _proof(body: Any) -> list[bytes]:
    hashes = body.get("proof") if isinstance(body, dict) else None
    if not isinstance(hashes, list) or len(hashes) > 128:
        raise RemoteLogError("the server sent a malformed proof")
    return [parse_hash(h, "proof hash") for h in hashes]


async def pinned_key(api: AuditApi, pinned: VerifyKey | None, origin: str) -> VerifyKey:
    """The key to hold the log to: ``pinned``, or the one the server names if none is.

    Raises:
        LogAltered: the server names another key than ``pinned``, or another log.
    """
    served, served_origin = await api.log_key()
    if pinned is not None and served != pinned:
        raise LogAltered(
            f"the log at {api.base_url} names key {served.kid}, not the pinned {pinned.kid}"
        )
    if served_origin != origin:
        raise LogAltered(f"the log at {api.base_url} is {served_origin!r}, not {origin!r}")
    return pinned or served
