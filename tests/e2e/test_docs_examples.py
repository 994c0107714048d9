"""Every Python example in README.md, docs/*.md and deploy/README.md runs as written.

Each ```` ```python ```` block is saved as a script and run with this checkout's Python
against one `istmo up`, from a directory whose ``.istmo`` is that stack's data directory:
the paths the examples use (``.istmo/keys/gt-police.json``) are the ones a new user has.
The stack listens on free ports; the examples' default addresses (NATS at
``127.0.0.1:4244``, the API at ``127.0.0.1:8844``) are rewritten to them, and nothing else
is. A block passes when it exits 0 within its time.

Blocks run in the order of the files and of the blocks within each, so an example may
rely on what an earlier one in the same file did (a bulletin published, then received).
An HTML comment on the line before a block says more:

    <!-- docs-test: skip needs a 3-node cluster -->      not run here; the reason is shown
    <!-- docs-test: first istmo audit export --format jsonl --out log.jsonl -->
                                                       run this `istmo` command first

``first`` takes only `istmo` commands (run with ``--data-dir .istmo``), split like a shell
would split them without any of a shell's expansions.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.stackproc import ISTMO, UpProcess

# Tens of seconds of stack start-up: run among the first files (tests/conftest.py).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DOCS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "deploy" / "README.md")
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
_MARK = re.compile(r"<!--\s*docs-test:\s*(skip|first)\s+(.*?)\s*-->\s*\n$")
TIMEOUT_S = 90


@dataclass(frozen=True)
class Example:
    """One Python block: where it is, its code, and what its marker says."""

    path: Path
    line: int
    code: str
    skip: str | None = None
    first: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def examples(path: Path, text: str | None = None) -> Iterator[Example]:
    """The Python blocks of ``path`` (or of ``text``, said to be at ``path``)."""
    text = path.read_text() if text is None else text
    for m in _FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = text[: m.start()]
        mark = _MARK.search(before[before.rfind("\n", 0, len(before) - 1) + 1 :])
        skip = first = None
        if mark is not None:
            if mark.group(1) == "skip":
                skip = mark.group(2)
            else:
                first = tuple(shlex.split(mark.group(2)))
                assert first[:1] == ("istmo",), f"{path}:{line}: `first` runs istmo commands"
        yield Example(path, line, m.group(1), skip, first[1:] if first else ())


ALL = [e for path in DOCS for e in examples(path)]


def test_the_docs_have_examples_and_markers_parse() -> None:
    """The collection itself: enough blocks found, and a marker belongs to its block only."""
    assert len(ALL) >= 8, [e.id for e in ALL]
    text = "intro\n<!-- docs-test: skip needs a cluster -->\n```python\nprint(1)\n```\n"
    text += "\n<!-- docs-test: first istmo audit export --out 'a b.jsonl' -->\n"
    text += "```python\nprint(2)\n```\n\n```python\nprint(3)\n```\n"
    got = [(e.line, e.code, e.skip, e.first) for e in examples(ROOT / "x.md", text)]
    assert got == [
        (3, "print(1)\n", "needs a cluster", ()),
        (8, "print(2)\n", None, ("audit", "export", "--out", "a b.jsonl")),
        (12, "print(3)\n", None, ()),
    ]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpProcess]:
    home = tmp_path_factory.mktemp("docs")
    up = UpProcess(home / ".istmo").start()
    try:
        yield up
    finally:
        assert up.stop() == 0, up.output


@pytest.mark.parametrize("example", ALL, ids=[e.id for e in ALL])
def test_the_example_runs(example: Example, stack: UpProcess) -> None:
    if example.skip:
        pytest.skip(f"{example.id}: {example.skip}")
    home = stack.data_dir.parent
    if example.first:
        argv = [ISTMO, *example.first, "--data-dir", ".istmo"]
        done = subprocess.run(argv, cwd=home, capture_output=True, text=True, timeout=TIMEOUT_S)
        assert done.returncode == 0, f"istmo {shlex.join(example.first)}: {done.stderr}"
    code = example.code.replace("127.0.0.1:4244", f"127.0.0.1:{stack.ports['nats']}")
    code = code.replace("127.0.0.1:8844", f"127.0.0.1:{stack.ports['api']}")
    script = home / "example.py"
    script.write_text(code)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"{example.id} failed:\n{done.stderr[-3000:]}"
