"""What an audit-log monitor remembers between runs: the file format both monitors (the
broker's local one and the auditor's remote one) read and write.

Pure: parsing and encoding only; the callers read and write the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.errors import ConfigError, EnvelopeError
from schemas.treehead import SignedTreeHead, parse_signed_tree_head

__all__ = ["MonitorState"]


@dataclass
class MonitorState:
    """The pinned log key and origin, the last verified head, and after an alarm the
    alarm and the heads kept as evidence (a monitor that alarmed trusts nothing more)."""

    path: Path
    log_key: str
    origin: str
    head: SignedTreeHead | None = None
    alarm: dict[str, Any] | None = None
    evidence: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def parse(cls, path: Path, raw: bytes) -> MonitorState:
        """The state stored in ``raw`` (read from ``path``).

        Raises:
            ConfigError: not a state file a monitor wrote.
        """
        try:
            doc = json.loads(raw)
            head = doc.get("head")
            return cls(
                path=path,
                log_key=str(doc["log_key"]),
                origin=str(doc["origin"]),
                head=None if head is None else parse_signed_tree_head(json.dumps(head).encode()),
                alarm=doc.get("alarm"),
                evidence=list(doc.get("evidence", [])),
            )
        except (ValueError, KeyError, TypeError, AttributeError, EnvelopeError) as exc:
            raise ConfigError(f"the monitor state {path} is not one this monitor wrote") from exc

    def encode(self) -> bytes:
        doc = {
            "v": 1,
            "log_key": self.log_key,
            "origin": self.origin,
            "head": None if self.head is None else self.head.model_dump(mode="json"),
            "alarm": self.alarm,
            "evidence": self.evidence,
        }
        return (json.dumps(doc, indent=2) + "\n").encode()

    def raise_alarm(
        self, kind: str, message: str, at: str, heads: tuple[SignedTreeHead, ...]
    ) -> None:
        """Record an alarm and keep ``heads`` as evidence."""
        self.alarm = {"kind": kind, "message": message, "at": at}
        self.evidence += [h.model_dump(mode="json") for h in heads]
