"""Where the relay's CPU goes when it answers a wide ``resolve`` (issue 16). A script, not
part of the bench report:

    python -m bench.resolve_scale 3500 10000 [--calls 20] [--keep /tmp/resolve-scale]

In process, over a prepared data directory of the synthetic directory
(``bench/synthetic_directory.py``, seed 8; prepared once per size and kept under
``--keep``, so before and after a change measure the same directory), as
``s0001-police`` asking for ``bench.harness.WIDE_LABELS`` (``border-incident``
releasable to SICA and CARICOM: every candidate is permitted). Each part is timed alone,
in process CPU time (``time.process_time``: the machine may be shared), median and
p99 over ``--calls`` calls, each call a real policy evaluation (a distinct ``now``):

* ``policy``: ``AgencyQueries.permitted`` (label checks, publish decision, candidates,
  ``permitted_receivers``, the encryption-key filter);
* ``excerpt_signed_afresh``: ``DirectoryService.signed_excerpt`` of the permitted
  (gathering the records, serialising, hashing and signing them);
* ``reply_encoded``: a ``ResolveReply`` on that excerpt, as the relay puts it on the wire;
* ``resolve_signed_afresh``: the three in a row, 61 s apart (a new excerpt each time),
  what the relay computes for a resolve of that audience (the ``resolve`` operation
  itself refuses more than ``MAX_WRAPS`` recipients after the policy part; the
  ``directory`` operation pages the same records); ``resolve_again``: the same 1 s
  apart (a broker that keeps its answers' excerpts gives the same one again);
* ``directory_page_100``: the ``directory`` operation through ``AgencyApi.handle`` for
  100 of the permitted (the SDK's page, ADR 14), on the wire, 61 s apart;
* ``narrow_resolve``: the ``resolve`` operation through ``AgencyApi.handle`` for labels
  releasable to two states (a handful permitted), on the wire.

It runs against whatever ``broker`` is importable, so the same script measures before
and after a change.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import WIDE_LABELS
from bench.stats import call_ms
from bench.synthetic_directory import write_policy_dir
from broker.config import Settings
from broker.relay import agency_api
from broker.relay.agency_api import AgencyApi
from broker.runtime.stack import Stack
from schemas.agency import (
    DirectoryRequest,
    ResolveReply,
    ResolveRequest,
    encode_reply,
    encode_request,
)
from schemas.subjects import api_subject

SENDER = "s0001-police"
_PAST_REUSE_S = 61  # seconds between calls that must sign afresh (EXCERPT_REUSE_S is 60)
NARROW_LABELS = WIDE_LABELS.model_copy(update={"rel_to": ("S0001", "S0002")})


# Each part in process CPU time: the machine may be shared.
cpu_ms = functools.partial(call_ms, clock=time.process_time)


def open_stack(agencies: int, keep: Path) -> Stack:
    """A prepared data directory of ``agencies`` under ``keep`` (made on first use)."""
    root = keep / str(agencies)
    policy_dir = root / "policies"
    if not policy_dir.exists():
        write_policy_dir(policy_dir, agencies, seed=8)
    stack = Stack(Settings(data_dir=root / "istmo", policy_dir=policy_dir), out=lambda _l: None)
    stack.prepare()
    return stack


def figures(agencies: int, keep: Path, calls: int) -> dict[str, object]:
    stack = open_stack(agencies, keep)
    assert stack.registry is not None
    assert stack.directory is not None
    d = stack.directory
    api = AgencyApi(stack.settings, stack.registry, d)
    q = api.queries
    # What the relay does for an agency's answer, on whichever broker is importable: the
    # excerpt it answers with and the bytes it puts on the wire.
    answer_excerpt = getattr(d, "answer_excerpt", d.signed_excerpt)
    wire: Callable[[Any], bytes] = encode_reply
    if hasattr(agency_api, "encoded_answer"):
        wire = functools.partial(agency_api.encoded_answer, directory=d)
    req = ResolveRequest(labels=WIDE_LABELS)
    now = int(time.time())
    tick = itertools.count(1)
    policy_version, permitted = q.permitted(SENDER, req, now)  # also works out the shapes

    def resolve(step: int) -> Callable[[], bytes]:
        """The wide resolve, ``step`` seconds after the one before (past the reuse of an
        excerpt or within it), each a real policy evaluation."""

        def once() -> bytes:
            when = now + step * next(tick)
            version, who = q.permitted(SENDER, req, when)
            excerpt = answer_excerpt(who, when)
            return wire(
                ResolveReply(recipients=tuple(who), policy_version=version, directory=excerpt)
            )

        return once

    def reply() -> bytes:
        return wire(
            ResolveReply(
                recipients=tuple(permitted), policy_version=policy_version, directory=signed
            )
        )

    page = encode_request(DirectoryRequest(agencies=tuple(permitted[:100])))
    narrow = encode_request(ResolveRequest(labels=NARROW_LABELS))

    def handled(op: str, data: bytes, step: int) -> Callable[[], bytes]:
        def once() -> bytes:
            return wire(api.handle(api_subject(SENDER, op), data, now=now + step * next(tick)))

        return once

    signed = answer_excerpt(permitted, now)  # kept, where a broker keeps them
    encoded = cpu_ms(reply, calls)
    first = handled("resolve", narrow, 1)()
    assert b'"recipients"' in first, first[:200]
    out: dict[str, object] = {
        "agencies": len(d.records),
        "permitted_wide": len(permitted),
        "resolve_reply_bytes": len(resolve(_PAST_REUSE_S)()),
        "policy_ms": cpu_ms(lambda: q.permitted(SENDER, req, now + next(tick)), calls),
        "excerpt_signed_afresh_ms": cpu_ms(
            lambda: d.signed_excerpt(permitted, now + next(tick)), calls
        ),
        "reply_encoded_ms": encoded,
        "resolve_signed_afresh_ms": cpu_ms(resolve(_PAST_REUSE_S), calls),
        "resolve_again_ms": cpu_ms(resolve(1), calls),
        "directory_page_100_ms": cpu_ms(handled("directory", page, _PAST_REUSE_S), calls * 5),
        "narrow_resolve_ms": cpu_ms(handled("resolve", narrow, _PAST_REUSE_S), calls * 5),
    }
    stack.registry.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("agencies", nargs="+", type=int)
    parser.add_argument("--calls", type=int, default=20)
    keep = Path(tempfile.gettempdir()) / "istmo-resolve-scale"
    parser.add_argument("--keep", type=Path, default=keep)
    args = parser.parse_args(argv)
    for n in args.agencies:
        print(json.dumps(figures(n, args.keep, args.calls)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
