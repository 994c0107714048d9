"""Looking for plaintext in the files of a stack that runs in this process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# Run in a process of its own: see files_holding.
_SCAN = """
import sys
from pathlib import Path
needle = bytes.fromhex(sys.argv[3])
for p in sorted(Path(sys.argv[1]).rglob(sys.argv[2])):
    if p.is_file() and needle in p.read_bytes():
        print(p)
"""


def files_holding(root: Path, needle: bytes, pattern: str = "*") -> list[str]:
    """The files under ``root`` (a running stack's data directory) matching ``pattern``
    and holding ``needle``.

    Read by another process: closing any descriptor of a file drops every POSIX lock
    this process holds on it, so reading ``istmo.db-shm`` here would take the WAL locks
    from under the stack's own SQLite connections (then another process's connection
    rebuilds the WAL index, and the sequencer meets "disk I/O error" from then on)."""
    done = subprocess.run(
        [sys.executable, "-c", _SCAN, str(root), pattern, needle.hex()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.splitlines()
