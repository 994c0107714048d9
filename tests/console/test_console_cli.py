"""`istmo console login` against a real `istmo up`: the link it prints signs in once; an
agency without a console scope gets a one-line refusal; the dev login exists there."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.console.browser import api_url, console_link
from tests.stackproc import UpProcess, run_cli


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpProcess]:
    proc = UpProcess(tmp_path_factory.mktemp("console-cli") / "istmo").start()
    try:
        yield proc
    finally:
        proc.stop()


def test_link_signs_in_once(up: UpProcess) -> None:
    url = console_link(up, "auditor")
    assert url.startswith(api_url(up) + "/console/login?code=")
    with httpx.Client(follow_redirects=False) as browser:
        first = browser.get(url)
        assert first.status_code == 303
        assert "istmo_console=" in first.headers["set-cookie"]
        assert browser.get(api_url(up) + "/console/log").status_code == 200
    with httpx.Client(follow_redirects=False) as other:
        again = other.get(url)
        assert again.status_code == 400
        assert other.get(api_url(up) + "/console/log").status_code == 303


def test_admin_gets_a_link_too(up: UpProcess) -> None:
    assert console_link(up, "admin").startswith(api_url(up) + "/console/login?code=")


def test_agency_without_console_scope_is_refused(up: UpProcess) -> None:
    r = run_cli("console", "login", "--as", "gt-police", "--no-open", data_dir=up.data_dir)
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1
    assert "auditors" in r.stderr
    assert "Traceback" not in r.stderr


def test_wrong_url_is_one_line(up: UpProcess) -> None:
    r = run_cli(
        "console", "login", "--as", "auditor", "--no-open", "--url", "ftp://x", data_dir=up.data_dir
    )
    assert r.returncode == 1
    assert "--url" in r.stderr


def test_dev_login_is_offered_under_istmo_up(up: UpProcess) -> None:
    page = httpx.get(api_url(up) + "/console/")
    assert 'action="/console/dev-login"' in page.text
    assert 'id="dev-auditor"' in page.text
