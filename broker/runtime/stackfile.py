"""``stack.json``: what a running ``istmo up`` writes into its data directory (its NATS
and API addresses, its process id) and removes when it stops, so commands run beside it
(``istmo admin``, ``istmo health``, ``istmo policy adopt``) find it.

Kept apart from ``broker.runtime.stack`` so that those commands do not import the whole
stack (the API, the relay) to read one file: ``istmo admin suspend`` should take effect
as soon as it can.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["STACK_FILE", "read_stack_file"]

STACK_FILE = "stack.json"


def read_stack_file(data_dir: Path) -> dict[str, object] | None:
    """What the stack running for ``data_dir`` wrote, or None (none runs, or unreadable)."""
    try:
        loaded: dict[str, object] = json.loads((data_dir / STACK_FILE).read_text())
        return loaded
    except (OSError, ValueError):
        return None
