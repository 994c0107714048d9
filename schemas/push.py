"""Pushed bulletins, framed (ADR 38, ADR 43): several envelopes in one NATS message.

A relay answers an agency's ``push`` wait with every bulletin of one decided batch routed
to that agency, not only the first: the wait is answered once, and the bulletins of one
batch are published within microseconds of each other, before the SDK could ask again.
The answer carries the header ``Istmo-Push-Frames: <n>`` and ``n`` frames, each

    <PRECEDENCE> <length>\\n<the envelope's bytes, exactly as queued>

The relays hand each other the pushes of a batch the same way, with the agencies each
bulletin was routed to after the length (``<PRECEDENCE> <length> <a>,<b>,...\\n``), on a
subject inside the broker's own account. Envelopes are JSON but not always on one line,
so a frame says its length instead of ending at a newline.

An answer without the header is one envelope alone (a relay before ADR 43): a FLASH or
IMMEDIATE bulletin, the only ones pushed then.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from schemas.errors import EnvelopeError
from schemas.ids import AgencyId, parse_agency_id
from schemas.labels import Precedence

__all__ = [
    "MAX_PUSH_FRAMES",
    "PUSH_FRAMES_HEADER",
    "PushFrame",
    "decode_push_frames",
    "encode_push_frames",
    "frame_size",
]

PUSH_FRAMES_HEADER = "Istmo-Push-Frames"
MAX_PUSH_FRAMES = 4096  # frames one message may hold (a batch holds far fewer)
_MAX_HEAD = 16 + 20  # "<PRECEDENCE> <length>" without recipients, with room to spare
_MAX_RECIPIENTS = 100_000


@dataclass(frozen=True)
class PushFrame:
    """One pushed bulletin: its precedence, its envelope, and (between relays only) the
    agencies it was routed to."""

    precedence: Precedence
    envelope: bytes
    recipients: tuple[str, ...] = ()


def encode_push_frames(frames: Iterable[PushFrame]) -> bytes:
    """The frames, one after the other (see the module's docstring)."""
    out = bytearray()
    for f in frames:
        head = f"{f.precedence.value} {len(f.envelope)}"
        if f.recipients:
            head += " " + ",".join(f.recipients)
        out += head.encode("ascii")
        out += b"\n"
        out += f.envelope
    return bytes(out)


def frame_size(frame: PushFrame) -> int:
    """How many bytes ``frame`` takes in ``encode_push_frames``'s output."""
    recipients = sum(len(r) + 1 for r in frame.recipients)
    return (
        len(frame.precedence.value)
        + 1
        + len(str(len(frame.envelope)))
        + recipients
        + 1
        + len(frame.envelope)
    )


def decode_push_frames(
    data: bytes, *, count: int | None = None, routed: bool = False
) -> list[PushFrame]:
    """The frames of ``data``: ``count`` of them if given (the header's), with the
    recipients of each if ``routed`` (between relays; an agency's answer has none).

    Raises:
        EnvelopeError: ``malformed``: a frame's head is not ``<PRECEDENCE> <length>``
            (and recipients when ``routed``), a length runs past the end, an agency id is
            not one, there are more than ``MAX_PUSH_FRAMES`` frames or not ``count``.
    """
    frames: list[PushFrame] = []
    pos, end = 0, len(data)
    while pos < end:
        if len(frames) >= MAX_PUSH_FRAMES:
            raise EnvelopeError(f"more than {MAX_PUSH_FRAMES} pushed frames", code="malformed")
        newline = data.find(b"\n", pos)
        if newline < 0 or (not routed and newline - pos > _MAX_HEAD):
            raise EnvelopeError("a pushed frame without its head", code="malformed")
        parts = data[pos:newline].split(b" ")
        if len(parts) != (3 if routed else 2):
            raise EnvelopeError("a pushed frame's head is malformed", code="malformed")
        try:
            precedence = Precedence(parts[0].decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise EnvelopeError("a pushed frame names no precedence", code="malformed") from None
        if not parts[1].isdigit() or len(parts[1]) > 10:
            raise EnvelopeError("a pushed frame's length is not a number", code="malformed")
        length = int(parts[1])
        start = newline + 1
        if length < 1 or start + length > end:
            raise EnvelopeError("a pushed frame runs past the message", code="malformed")
        recipients: tuple[AgencyId, ...] = ()
        if routed:
            recipients = _recipients(parts[2])
        frames.append(PushFrame(precedence, data[start : start + length], recipients))
        pos = start + length
    if count is not None and len(frames) != count:
        raise EnvelopeError(
            f"{len(frames)} pushed frames where the header says {count}", code="malformed"
        )
    return frames


def _recipients(field: bytes) -> tuple[AgencyId, ...]:
    names: Sequence[str] = field.decode("ascii", "replace").split(",")
    if not field or len(names) > _MAX_RECIPIENTS:
        raise EnvelopeError("a pushed frame names no recipients", code="malformed")
    return tuple(parse_agency_id(a) for a in names)
