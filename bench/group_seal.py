"""Sealing one bulletin for a large audience: per-recipient wraps against community group
keys (ADR 18). In process, no broker: ``python -m bench.group_seal [N ...]``.

For each N (recipients, ids like those of ``bench.synthetic_directory``) it prints the
envelope size and the time to seal: one HPKE wrap each (hybrid ML-KEM-768 + X25519) up to
MAX_WRAPS, and one group key for all; the time for a manager to make an epoch for N members
(N HPKE wraps and a signature); and the time for a member to open the bulletin with its
group key. Medians and p99 over ``--rounds``.
"""

from __future__ import annotations

import argparse
import statistics
import time

from schemas.envelope import MAX_WRAPS, Content
from schemas.groups import epoch_statement, new_epoch_key, sign_epoch, wrap_epoch_key
from schemas.ids import AgencyId
from schemas.keys import EncryptionKey, SigningKey
from schemas.labels import Classification, Labels, Precedence, Tlp
from schemas.sealing import encode_envelope, open_envelope, parse_envelope, seal

LABELS = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("SICA", "CARICOM"),
    precedence=Precedence.FLASH,
)
TEXT = "x" * 2000  # a two-kilobyte bulletin


def _ms(samples: list[float]) -> str:
    s = sorted(samples)
    p99 = s[min(len(s) - 1, int(len(s) * 0.99))]
    return f"{statistics.median(s) * 1000:.2f} / {p99 * 1000:.2f} ms"


def run(n: int, rounds: int) -> None:
    ids = [
        AgencyId(f"s{i // 4 + 1:04d}-{('police', 'justice', 'military', 'foreign')[i % 4]}")
        for i in range(n)
    ]
    signer = SigningKey.generate()
    member = EncryptionKey.generate()
    public = member.public_key
    epoch = new_epoch_key("ALL", 1)
    content = Content(title="FLASH: vessel sighted", text=TEXT)
    group_times, sizes = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        env = seal(
            content=content,
            labels=LABELS,
            originator=AgencyId("s9999-police"),
            signing_key=signer,
            recipients={},
            now=int(time.time()),
            groups=[epoch],
            members={"ALL": ids},
        )
        raw = encode_envelope(env)
        group_times.append(time.perf_counter() - t)
        sizes.append(len(raw))
    open_times = []
    parsed = parse_envelope(raw)
    for _ in range(rounds):
        t = time.perf_counter()
        open_envelope(
            parsed, recipient=ids[0], key=None, sender_key=signer.verify_key, epoch_keys=[epoch]
        )
        open_times.append(time.perf_counter() - t)
    per = min(n, MAX_WRAPS)
    wrap_times, wrap_size = [], 0
    for _ in range(max(1, rounds // 10)):
        t = time.perf_counter()
        env = seal(
            content=content,
            labels=LABELS,
            originator=AgencyId("s9999-police"),
            signing_key=signer,
            recipients=dict.fromkeys(ids[:per], public),
            now=int(time.time()),
        )
        wrap_size = len(encode_envelope(env))
        wrap_times.append(time.perf_counter() - t)
    t = time.perf_counter()
    st = epoch_statement(epoch, manager="s0001-police", members=ids, issued_at=int(time.time()))
    sign_epoch(st, signer)
    for a in ids:
        wrap_epoch_key(epoch, st, a, public)
    manager_s = time.perf_counter() - t
    print(
        f"{n:>6} recipients | group key: seal {_ms(group_times)} (p50 / p99), envelope "
        f"{sizes[-1]:,} B, open {_ms(open_times)} | one wrap each for {per}: seal "
        f"{_ms(wrap_times)}, envelope {wrap_size:,} B | manager's epoch for {n}: "
        f"{manager_s * 1000:.0f} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", nargs="*", type=int, default=[500, 3500, 10000])
    ap.add_argument("--rounds", type=int, default=50)
    args = ap.parse_args()
    for n in args.n:
        run(n, args.rounds)


if __name__ == "__main__":
    main()
