"""The text of a bulletin on the command line: ``--body`` or ``--body-file``, bounded."""

from __future__ import annotations

import sys
from pathlib import Path

from schemas.errors import ConfigError

__all__ = ["MAX_BODY_BYTES", "read_body"]

MAX_BODY_BYTES = 512 * 1024


def read_body(body: str | None, body_file: str | None) -> str:
    """The text of ``--body`` or of the file ``--body-file`` names (``-``: stdin).

    Raises:
        ConfigError: neither given, unreadable, over ``MAX_BODY_BYTES`` or not UTF-8.
    """
    if body is not None:
        if len(body.encode("utf-8", "surrogatepass")) > MAX_BODY_BYTES:
            raise ConfigError(f"the body is over {MAX_BODY_BYTES // 1024} KiB")
        return str(body)
    if body_file is None:
        raise ConfigError("give the bulletin text with --body-file FILE (or - for stdin) or --body")
    try:
        if str(body_file) == "-":
            if sys.stdin is None:
                raise ConfigError(
                    "--body-file - reads standard input, and this command has none",
                    hint="give the text in a file: --body-file FILE",
                )
            data = sys.stdin.buffer.read(MAX_BODY_BYTES + 1)
        else:
            with Path(body_file).open("rb") as f:
                data = f.read(MAX_BODY_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the body file {body_file}: {exc.strerror}") from exc
    if len(data) > MAX_BODY_BYTES:
        raise ConfigError(f"the body is over {MAX_BODY_BYTES // 1024} KiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"the body file {body_file} is not UTF-8 text") from exc
