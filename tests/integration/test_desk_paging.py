"""The desk's inbox in pages of 100 (keyset on the archive's row numbers): older and newer
links walk every bulletin once, in order, keeping the filters and the search; a bad page
is refused."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from html import unescape
from pathlib import Path

import httpx
import pytest

from clients.archive import Archive
from clients.archive_keys import ArchiveSecret
from clients.desk_commands import people_of
from clients.desk_web import PAGE, DeskState, desk_app
from schemas.labels import Classification, Labels, Precedence, Tlp
from tests.integration.test_desk_http import PASSPHRASE, PW, bulletin

N = 230  # every tenth one TLP:RED: 207 AMBER, in pages of 100, 100 and 7
_ROW = re.compile(r'<a href="/b/00000000-0000-4000-8000-(\d{12})">')
_LINK = re.compile(r'<a href="([^"]+)" rel="(prev|next)">')


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    with Archive.open(
        tmp_path / "sv-police.archive.sqlite",
        "sv-police",
        lambda: ArchiveSecret("passphrase", PASSPHRASE.encode()),
    ) as archive:
        for n in range(1, N + 1):
            tlp = Tlp.RED if n % 10 == 0 else Tlp.AMBER
            labels = Labels(
                topic="drug-trafficking",
                classification=Classification.RESTRICTED,
                tlp=tlp,
                rel_to=("SICA",),
                precedence=Precedence.ROUTINE,
            )
            archive.add(bulletin(n, labels=labels, body=f"Sighting number {n}."))
        people = people_of(archive)
        people.add("ana", "reader", PW)
        state = DeskState(archive, people, frozenset({"desk.test"}))
        transport = httpx.ASGITransport(desk_app(state))
        async with httpx.AsyncClient(transport=transport, base_url="http://desk.test") as c:
            form = await c.get("/login")
            csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
            assert csrf
            data = {"csrf": csrf.group(1), "name": "ana", "password": PW}
            assert (await c.post("/login", data=data)).status_code == 303
            yield c
        people.close()
        if state.drafts is not None:
            state.drafts.close()


async def _page(c: httpx.AsyncClient, url: str) -> tuple[list[int], dict[str, str]]:
    r = await c.get(url)
    assert r.status_code == 200, r.text
    rows = [int(m) for m in _ROW.findall(r.text)]
    links = {rel: unescape(href) for href, rel in _LINK.findall(r.text)}
    return rows, links


@pytest.mark.parametrize("start", ["/?tlp=AMBER", "/?q=sighting&tlp=AMBER"])
async def test_older_and_newer_links_walk_every_bulletin_once(
    client: httpx.AsyncClient, start: str
) -> None:
    amber = [n for n in range(N, 0, -1) if n % 10]
    pages, url = [], start
    while True:
        rows, links = await _page(client, url)
        pages.append(rows)
        for link in links.values():  # the filter and the words go along
            assert "tlp=AMBER" in link
            assert ("q=sighting" in link) == ("q=" in start)
        if "next" not in links:
            break
        url = links["next"]
    assert [len(p) for p in pages] == [PAGE, PAGE, 7]
    assert [n for p in pages for n in p] == amber
    # Back from the last page, by the newer links: the same pages.
    back = [pages[-1]]
    while "prev" in links:
        rows, links = await _page(client, links["prev"])
        back.append(rows)
    assert back[::-1] == pages
    _, links = await _page(client, start)
    assert "prev" not in links  # the newest page has no newer one


async def test_a_short_list_has_no_links_and_a_bad_page_is_refused(
    client: httpx.AsyncClient,
) -> None:
    rows, links = await _page(client, "/?tlp=RED")
    assert len(rows) == 23
    assert links == {}
    for bad in ("abc", "-1", "9" * 16):
        r = await client.get("/", params={"before": bad})
        assert r.status_code == 400
        assert "That page of the list does not exist" in r.text
