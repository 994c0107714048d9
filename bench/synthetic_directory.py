"""A synthetic directory with the structure of ``policies/directory.json``, any size.

The two communities, the four sectors (with their clearances and topics) and the two
regional centres are copied from the real file; the states are generated (codes
``S0001``, ``S0002``, ...; names "Synthetic state 1", ...), split between SICA, CARICOM
and both with a fixed seed, and just enough of them are marked ``no_military`` that the
directory holds exactly the number of agencies asked for. Same seed, same file.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path
from typing import Any

__all__ = ["synthetic_directory", "write_policy_dir"]

_REAL = Path(__file__).resolve().parent.parent / "policies"


def synthetic_directory(agencies: int, *, seed: int = 8, template: Path = _REAL) -> dict[str, Any]:
    """The directory spec (as ``directory.json`` holds it) with exactly ``agencies``.

    Raises:
        ValueError: fewer agencies than the regional centres and one state need.
    """
    spec: dict[str, Any] = json.loads((template / "directory.json").read_text(encoding="utf-8"))
    regional = len(spec["regional"])
    per_state = len(spec["sectors"])
    national = agencies - regional
    if national < per_state - 1:
        raise ValueError(f"{agencies} agencies is too few for one state and the regional centres")
    states = math.ceil(national / per_state)
    without_military = states * per_state - national  # each drops one agency
    if without_military > states:
        raise ValueError(f"cannot make exactly {agencies} agencies")
    rng = random.Random(seed)
    choices = (["SICA"], ["CARICOM"], ["CARICOM", "SICA"])
    out: dict[str, Any] = {}
    for i in range(1, states + 1):
        state: dict[str, Any] = {
            "name": f"Synthetic state {i}",
            "languages": [rng.choice(["en", "es", "fr", "nl"])],
            "communities": list(rng.choices(choices, weights=(8, 12, 1))[0]),
        }
        if i > states - without_military:
            state["no_military"] = "synthetic: no armed forces"
        out[f"S{i:04d}"] = state
    spec["about"] = (
        f"Synthetic directory for the benchmarks: {agencies} agencies in {states} generated "
        f"states (seed {seed}), with the communities, sectors and regional centres of Istmo's "
        "demo directory."
    )
    spec["states"] = out
    return spec


def write_policy_dir(dest: Path, agencies: int, *, seed: int = 8, template: Path = _REAL) -> Path:
    """A copy of ``policies/`` whose ``directory.json`` is synthetic; returns ``dest``."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(template, dest)
    spec = synthetic_directory(agencies, seed=seed, template=template)
    (dest / "directory.json").write_text(json.dumps(spec, indent=1) + "\n", encoding="utf-8")
    return dest
