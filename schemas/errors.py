"""The one exception tree of Istmo.

    IstmoError                      base of everything we raise on purpose
    ├── EnvelopeError               bad input: malformed, oversized, unknown version or label
    │   ├── SignatureError          a signature or key binding does not verify
    │   ├── DecryptionError         a wrap or ciphertext does not open (uniform to peers)
    │   ├── ProofError              a Merkle proof does not verify (schemas.merkle_verify)
    │   └── TreeHeadConflict        a tree head rolls back or forks the log (schemas.treehead)
    ├── PolicyDenied                the policy said no
    ├── BusUnavailable              NATS is not reachable or did not answer
    ├── AuditStoreError             the audit store could not record an event
    └── ConfigError                 a setting, file or keystore is missing or wrong

Every error carries a short machine ``code`` (for audit entries and API problems) and a
message built from attributes, never from keys or plaintext. ``broker`` and ``clients``
add branches of their own under these.
"""

from __future__ import annotations

__all__ = [
    "AuditStoreError",
    "BusUnavailable",
    "ConfigError",
    "DecryptionError",
    "EnvelopeError",
    "IstmoError",
    "PolicyDenied",
    "SignatureError",
]


class IstmoError(Exception):
    """Base of every error Istmo raises on purpose."""

    default_code = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code or self.default_code


class EnvelopeError(IstmoError):
    """The input is not a well-formed Istmo message (code names the fault)."""

    default_code = "malformed"


class SignatureError(EnvelopeError):
    """A signature does not verify, or the key is not the sender's."""

    default_code = "signature_invalid"


class DecryptionError(EnvelopeError):
    """A wrap or the body does not open. Peers see only this, never the detail."""

    default_code = "integrity_error"


class PolicyDenied(IstmoError):
    """The policy denied the action."""

    default_code = "policy_deny"


class BusUnavailable(IstmoError):
    """The message bus (NATS) is not reachable or did not answer in time."""

    default_code = "bus_unavailable"


class AuditStoreError(IstmoError):
    """The audit store could not record an event."""

    default_code = "audit_store"


class ConfigError(IstmoError):
    """A setting, file or keystore is missing or wrong."""

    default_code = "config"
