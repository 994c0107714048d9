"""4. SDK cost: seal + sign per 2 KiB bulletin for 1, 5, 20, 60 recipients with the
hybrid ML-KEM-768 + X25519 KEM and with X25519; open + verify per bulletin (one
recipient's wrap). Best of three timeit runs, in this process, no I/O.
"""

from __future__ import annotations

import timeit

from bench.context import Context
from bench.harness import BODY
from schemas.envelope import Content
from schemas.keys import EncryptionKey, SigningKey
from schemas.labels import Classification, Labels, Tlp
from schemas.sealing import encode_envelope, open_envelope, parse_envelope, seal

NAME = "sdk_cost"
TITLE = "4. SDK cost: seal + sign, open + verify"
LABELS = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("BZ",),
)


def crypto_costs(scale: float = 1.0) -> list[dict[str, object]]:
    rows = []
    sk = SigningKey.generate()
    for kem in ("MLKEM768-X25519", "X25519"):
        for n in (1, 5, 20, 60):
            keys = {f"ag-{i:03d}": EncryptionKey.generate(kem) for i in range(n)}  # type: ignore[arg-type]
            pubs = {k: v.public_key for k, v in keys.items()}

            def do_seal(pubs: dict = pubs) -> bytes:  # type: ignore[type-arg]
                return encode_envelope(
                    seal(
                        content=Content(title="t", text=BODY),
                        labels=LABELS,
                        originator="gt-police",  # type: ignore[arg-type]
                        signing_key=sk,
                        recipients=pubs,
                        now=1_800_000_000,
                    )  # type: ignore[arg-type]
                )

            raw = do_seal()
            first = next(iter(keys))

            def do_open(raw: bytes = raw, first: str = first, keys: dict = keys) -> None:  # type: ignore[type-arg]
                env = parse_envelope(raw)
                open_envelope(env, recipient=first, key=keys[first], sender_key=sk.verify_key)  # type: ignore[arg-type]

            reps = max(3, int(200 * scale) // n)
            opens = max(5, int(50 * scale))
            seal_ms = min(timeit.repeat(do_seal, number=reps, repeat=3)) / reps * 1e3
            open_ms = min(timeit.repeat(do_open, number=opens, repeat=3)) / opens * 1e3
            rows.append(
                {
                    "kem": kem,
                    "recipients": n,
                    "seal_ms": round(seal_ms, 3),
                    "open_ms": round(open_ms, 3),
                    "envelope_bytes": len(raw),
                }
            )
    return rows


def run(ctx: Context) -> dict[str, object]:
    rows = crypto_costs(float(ctx.pick(0.3, 1.0)))
    for r in rows:
        print(
            f"  {r['kem']:<16} {r['recipients']:>3} recipients  seal {r['seal_ms']:>7.2f} ms"
            f"  open {r['open_ms']:>6.2f} ms  {r['envelope_bytes']:>7} B",
            flush=True,
        )
    ctx.note_self()
    return {"rows": rows}
