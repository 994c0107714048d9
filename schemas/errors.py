"""The one exception tree of Istmo.

Every branch, with the module that defines it where that is not this one::

    IstmoError                      base of everything we raise on purpose
    ├── EnvelopeError               bad input: malformed, oversized, unknown version or label
    │   ├── SignatureError          a signature or key binding does not verify
    │   │   ├── QuorumMissing       too few witness cosignatures on a checkpoint
    │   │   │                           (schemas.checkpoint)
    │   │   └── KeyNotLogged        a recipient's key is not in the witnessed log
    │   │       │                       (schemas.keylog)
    │   │       └── KeyNotWitnessedYet  its entry is not under a checkpoint yet
    │   │                                   (schemas.keylog)
    │   ├── DecryptionError         a wrap or ciphertext does not open (uniform to peers)
    │   ├── ProofError              a Merkle proof does not verify (schemas.merkle_verify)
    │   ├── TreeHeadConflict        a tree head rolls back or forks the log (schemas.treehead)
    │   ├── RequestRefused          an enrolment request a good token does not admit
    │   │                               (broker.directory.enrolment)
    │   ├── AttachmentError         an attachment missing, damaged or not opening
    │   │                               (clients.errors)
    │   ├── RequestRefused          the broker refused a request with a code the SDK does
    │   │                               not know (clients.errors)
    │   └── NotFound                no such bulletin or key for this agency (clients.errors)
    ├── PolicyDenied                the policy said no
    ├── BusUnavailable              NATS is not reachable or did not answer
    │   └── PublishUnacknowledged   NATS never acknowledged a bulletin (clients.errors)
    ├── AuditStoreError             the database refused or is not reachable
    │   └── LogCorrupt              the stored log is not what its key signed (broker.audit.entries)
    │       └── MissingNode         a Merkle node is missing; a LookupError (broker.audit.entries)
    ├── ConfigError                 a setting, file or keystore is missing or wrong
    │   ├── PolicyLoadError         a policy set does not load (broker.policy.bundle)
    │   └── SequencerBusy           another sequencer holds the log (broker.audit.sequencer)
    ├── NotFound                    no such object for this caller (broker.relay.queries)
    ├── AuthError                   a refused token request or access token (broker.api.oauth)
    ├── TokenRefused                an enrolment token that does not admit its bearer
    │                                   (broker.directory.enrolment)
    ├── PublishRejected             the relay refused a bulletin (clients.errors)
    ├── ApiError                    the HTTP API refused a request (clients.oauth)
    │   ├── TokenRefused            the token endpoint refused (clients.oauth)
    │   └── EnrolmentRefused        the broker refused an enrolment (clients.enroll)
    ├── ApiUnavailable              the HTTP API is not reachable (clients.oauth)
    ├── LogAltered                  a served log contradicts its signed heads (clients.audit_api)
    └── RemoteLogError              a malformed answer of the audit API (clients.audit_api)

(``tests/core/test_errors.py`` walks the subclasses and checks this drawing.)

Every error carries a short machine ``code`` (for audit entries and API problems) and a
message built from attributes, never from keys or plaintext. It may carry a ``hint``: one
short line saying what to do about it, which the ``istmo`` command prints on a line of its
own after the message (``diagnostics()``); the HTTP API answers with the message only.
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
    """Base of every error Istmo raises on purpose. Raise a branch, never this class.

    Attributes:
        code: a short machine code (``default_code`` of the class unless given).
        hint: what the user can do about it, one short line, or None.
    """

    default_code = "error"

    def __init__(self, message: str, *, code: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.code = code or self.default_code
        self.hint = hint

    def diagnostics(self) -> str:
        """The message, then the hint on a line of its own: what a command line prints."""
        return f"{self}\n  hint: {self.hint}" if self.hint else str(self)


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
    """The database (the audit store and the registry beside it) refused or is away."""

    default_code = "audit_store"


class ConfigError(IstmoError):
    """A setting, file or keystore is missing or wrong."""

    default_code = "config"
