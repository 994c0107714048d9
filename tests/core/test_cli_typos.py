"""What a mistyped command line gets: one line saying what is wrong, and a way on."""

from __future__ import annotations

from pathlib import Path

import pytest

from clients.cli import build_parser, main
from clients.label_flags import any_case

PUBLISH = [
    "publish", "--as", "gt-police", "--topic", "migration", "--classification", "RESTRICTED",
    "--tlp", "AMBER", "--rel-to", "SICA", "--title", "t", "--body", "b",
]  # fmt: skip


def _with(flag: str, value: str) -> list[str]:
    args = list(PUBLISH)
    args[args.index(flag) + 1] = value
    return args


@pytest.mark.parametrize(
    ("typed", "parsed"),
    [("restricted", "RESTRICTED"), ("Restricted", "RESTRICTED"), ("SECRET", "SECRET")],
)
def test_any_case_finds_the_choice(typed: str, parsed: str) -> None:
    assert any_case(["RESTRICTED", "SECRET"])(typed) == parsed


def test_an_unknown_choice_is_left_for_argparse_to_refuse() -> None:
    assert any_case(["RESTRICTED"])("restrictd") == "restrictd"


@pytest.mark.parametrize(
    ("flag", "typed", "parsed"),
    [
        ("--classification", "restricted", "RESTRICTED"),
        ("--tlp", "amber+strict", "AMBER+STRICT"),
        ("--topic", "Migration", "migration"),
    ],
)
def test_label_flags_take_any_case(flag: str, typed: str, parsed: str) -> None:
    args = build_parser().parse_args(_with(flag, typed))
    assert getattr(args, flag.lstrip("-")) == parsed


def test_precedence_takes_any_case() -> None:
    assert build_parser().parse_args([*PUBLISH, "--precedence", "flash"]).precedence == "FLASH"


def test_a_typo_is_one_line_with_the_choices_not_the_usage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(_with("--classification", "restrictd"))
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("istmo publish: argument --classification: invalid choice")
    assert "'RESTRICTED'" in lines[0]
    assert lines[1:] == ["  hint: `istmo publish --help` shows every option"]


def test_a_near_agency_id_is_suggested(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    for agency in ("gt-police", "gt-justice", "hn-police"):
        (keys / f"{agency}.json").write_text("{}")
    typo = _with("--as", "gt-polic")
    assert main([*typo, "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"istmo: no keystore for agency 'gt-polic' at {keys / 'gt-polic.json'}",
        "  hint: did you mean gt-police?",
    ]


def test_an_unlike_agency_id_gets_the_general_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "keys").mkdir()
    assert main([*_with("--as", "zz-nobody"), "--data-dir", str(tmp_path)]) == 1
    assert "check the agency id" in capsys.readouterr().err


def test_publish_help_states_the_body_limit(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["publish", "--help"])
    assert "at most 512 KiB" in " ".join(capsys.readouterr().out.split())
