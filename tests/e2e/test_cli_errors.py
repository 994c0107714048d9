"""What ``istmo`` says when it cannot go on: one line naming the fault, then what to do on a
line of its own (``  hint: ...``), exit 1, no traceback. The real console script, run as a
user would, against nothing: every case here fails before any service is needed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from clients.keystore import save_keystore
from schemas.keys import SigningKey
from schemas.keystore import new_keystore
from schemas.natskeys import new_user_seed
from tests.stackproc import ISTMO, free_port

PASSPHRASE = "correct horse battery staple"


def istmo(*args: str, code: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``istmo ARGS`` (or ``python -c CODE ARGS``) with stdin a pipe, never a terminal,
    and no passphrase file in the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ISTMO_")}
    argv = [sys.executable, "-c", code, *args] if code else [ISTMO, *args]
    return subprocess.run(
        argv, capture_output=True, text=True, input="", env=env, timeout=60, check=False
    )


def error_and_hint(r: subprocess.CompletedProcess[str], exit_code: int = 1) -> tuple[str, str]:
    assert r.returncode == exit_code, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2, r.stderr
    assert lines[0].startswith("istmo: "), r.stderr
    assert lines[1].startswith("  hint: "), r.stderr
    return lines[0].removeprefix("istmo: "), lines[1].removeprefix("  hint: ")


def keystore(path: Path, passphrase: str | None = None) -> Path:
    ks, _, _ = new_keystore(
        agency="gt-police",
        nats_seed=new_user_seed(),
        directory_key=SigningKey.generate().verify_key,
        now=1,
    )
    save_keystore(path, ks, passphrase=passphrase)
    return path


def test_no_stack_running_for_an_agency(tmp_path: Path) -> None:
    ks = keystore(tmp_path / "gt-police.json")
    r = istmo("receive", "--as", str(ks), "--data-dir", str(tmp_path / "none"))
    assert error_and_hint(r) == (
        f"broker not running: no {tmp_path / 'none' / 'stack.json'}",
        "start it with `istmo up`, or pass --nats-url",
    )


def test_no_stack_running_for_an_operator(tmp_path: Path) -> None:
    hint = "start `istmo up`, or pass --nats-url"
    r = istmo("relay", "--data-dir", str(tmp_path))
    assert error_and_hint(r) == ("no stack running for this data directory", hint)
    r = istmo("health", "--data-dir", str(tmp_path))
    assert error_and_hint(r, exit_code=2) == (f"no stack running for {tmp_path}", hint)


def test_an_unknown_agency(tmp_path: Path) -> None:
    bid = "5f0c7d2e-9a41-4c36-8d0b-1e2f3a4b5c6d"
    r = istmo("receipts", "--as", "xx-nobody", "--data-dir", str(tmp_path), bid)
    assert error_and_hint(r) == (
        f"no keystore for agency 'xx-nobody' at {tmp_path / 'keys' / 'xx-nobody.json'}",
        "check the agency id, or pass the --data-dir that holds its keystore",
    )


def test_a_protected_keystore_without_a_terminal(tmp_path: Path) -> None:
    ks = keystore(tmp_path / "gt-police.json", passphrase=PASSPHRASE)
    r = istmo("keys", "protect", "--as", str(ks), "--data-dir", str(tmp_path))
    assert error_and_hint(r) == (
        f"keystore {ks} is protected by a passphrase",
        "run interactively, or give --passphrase-file (or set ISTMO_PASSPHRASE_FILE to) a file "
        "that holds it",
    )
    ks.chmod(0o644)
    r = istmo("keys", "protect", "--as", str(ks), "--data-dir", str(tmp_path))
    assert error_and_hint(r) == (f"keystore {ks} is readable by others", f"chmod 600 {ks}")


def test_no_standard_input_at_all(tmp_path: Path) -> None:
    """Started by cron or a service manager, a command may have descriptor 0 closed
    (``sys.stdin`` is None): the same error and hint as without a terminal, no traceback."""
    ks = keystore(tmp_path / "gt-police.json", passphrase=PASSPHRASE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ISTMO_")}
    r = subprocess.run(
        ["sh", "-c", 'exec "$@" <&-', "sh", ISTMO, "keys", "protect", "--as", str(ks)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert error_and_hint(r)[0] == f"keystore {ks} is protected by a passphrase"


def test_a_port_taken(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        r = istmo(
            "up",
            "--data-dir",
            str(tmp_path),
            "--nats-port",
            str(taken),
            "--nats-http-port",
            str(free_port()),
            "--api-port",
            str(free_port()),
        )
    error, hint = error_and_hint(r)
    assert error.startswith(f"port {taken} is taken (NATS clients"), error
    assert hint.startswith("pick another"), hint


def test_the_server_parts_missing(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['sqlalchemy'] = None\n"
        "from clients.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    r = istmo("sequencer", "--data-dir", str(tmp_path), code=code)
    assert error_and_hint(r) == (
        "this command needs the server parts (sqlalchemy is missing)",
        "pip install -e '.[server]'",
    )


def test_a_receipts_digest_needs_verify_and_hex(tmp_path: Path) -> None:
    bid = "5f0c7d2e-9a41-4c36-8d0b-1e2f3a4b5c6d"
    args = ("receipts", "--as", "gt-police", "--data-dir", str(tmp_path), bid, "--digest")
    r = istmo(*args, "ab" * 32)
    assert error_and_hint(r) == (
        "--digest is what --verify checks receipts against",
        "add --verify",
    )
    bad = istmo(*args, "not-a-digest", "--verify")
    assert bad.returncode == 2  # argparse's usage error, before anything else
    assert "envelope_digest that `istmo publish --json` printed" in bad.stderr
