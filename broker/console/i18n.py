"""The console's languages: message catalogues kept as data, plural rules, negotiation.

One JSON file per language under ``broker/data/console/i18n/`` maps a key to its text
(``{"log.title": "Audit log"}``); named values are filled in (``_("entry.title",
index=3)``). A key whose English catalogue has ``<key>.one`` and ``<key>.other`` is a
plural: ``_("admin.shown", n=3)`` picks the form the language's CLDR cardinal rule gives
for ``n`` (``PLURAL_FORMS``, ``plural_form``). Codes shown as words (event types,
reasons, topics...) are keys ``<kind>.<code>``; ``_.word(kind, code)`` shows the code
itself when no catalogue has a word for it. A missing string falls back to English and a
missing key shows the key (a typo is visible, never an exception). ADR 26 says why; the
desk (``clients.desk_strings``) keeps its own copy of this loader, since ``broker`` and
``clients`` never import each other.

The language is the ``istmo_lang`` cookie if it names one we have, else the best of the
browser's ``Accept-Language`` (q-values honoured), else English.
"""

from __future__ import annotations

__all__ = [
    "LANGS",
    "LANG_COOKIE",
    "PLURAL_FORMS",
    "Translator",
    "add_strings",
    "negotiate",
    "plural_form",
    "translator",
]

import json
from collections.abc import Mapping
from pathlib import Path

LANGS = ("en", "es", "fr", "nl")
LANG_COOKIE = "istmo_lang"
CATALOG_DIR = Path(__file__).resolve().parent.parent / "data" / "console" / "i18n"
_MAX_ACCEPT = 400  # characters of Accept-Language read

# The plural forms each language's CLDR cardinal rule uses for whole numbers (CLDR 46).
PLURAL_FORMS: dict[str, tuple[str, ...]] = {
    "en": ("one", "other"),
    "es": ("one", "many", "other"),
    "fr": ("one", "many", "other"),
    "nl": ("one", "other"),
}


def plural_form(lang: str, n: int) -> str:
    """The CLDR cardinal plural category of the whole number ``n`` in ``lang``.

    en, nl: one for 1. es: one for 1, many for a non-zero multiple of a million ("un
    millón de boletines"). fr: one for 0 and 1, many as es. Everything else is other.
    """
    n = abs(n)
    if lang == "fr" and n in (0, 1):
        return "one"
    if lang in ("en", "es", "nl") and n == 1:
        return "one"
    if lang in ("es", "fr") and n != 0 and n % 1_000_000 == 0:
        return "many"
    return "other"


def _load(folder: Path) -> dict[str, dict[str, str]]:
    catalogs: dict[str, dict[str, str]] = {}
    for lang in LANGS:
        data = json.loads((folder / f"{lang}.json").read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            raise ValueError(f"{folder / lang}.json is not an object of strings")
        catalogs[lang] = data
    return catalogs


_CATALOGS: dict[str, dict[str, str]] = _load(CATALOG_DIR)
_EN = _CATALOGS["en"]


def add_strings(lang: str, strings: Mapping[str, str]) -> None:
    """Add or replace strings of ``lang``; for a module whose strings are not in the files
    yet (prefer adding them to the JSON catalogues)."""
    if lang not in _CATALOGS:
        raise ValueError(f"no catalog for language {lang!r}")
    _CATALOGS[lang].update(strings)


def negotiate(cookie: str | None, accept_language: str | None) -> str:
    """The language to answer in: the cookie's, else the browser's best, else English."""
    if cookie in LANGS:
        return cookie
    best, best_q = "en", 0.0
    for i, part in enumerate((accept_language or "")[:_MAX_ACCEPT].split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        primary = tag.strip().lower().split("-")[0]
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
        # Earlier tags win ties; a tiny penalty per position keeps that with equal q.
        score = q - i * 1e-6
        if primary in LANGS and q > 0 and score > best_q:
            best, best_q = primary, score
    return best


class Translator:
    """``_("key", name=value)`` in one language, English as the fallback; ``n`` picks a
    plural form when the key is a plural."""

    def __init__(self, lang: str) -> None:
        self.lang = lang if lang in _CATALOGS else "en"
        self.catalog = _CATALOGS[self.lang]

    def _text(self, key: str, n: object) -> str:
        count = n if isinstance(n, int) and not isinstance(n, bool) else None
        for lang, catalog in ((self.lang, self.catalog), ("en", _EN)):
            if key in catalog:
                return catalog[key]
            if count is not None:
                form = catalog.get(f"{key}.{plural_form(lang, count)}")
                if form is not None or f"{key}.other" in catalog:
                    return form or catalog[f"{key}.other"]
        return key

    def __call__(self, key: str, **values: object) -> str:
        text = self._text(key, values.get("n"))
        if values:
            try:
                return text.format(**values)
            except (KeyError, IndexError, ValueError):
                return text
        return text

    def word(self, kind: str, code: object) -> str:
        """The word for ``code`` of ``kind`` (``topic``, ``reason``...), else the code."""
        key = f"{kind}.{code}"
        return self.catalog.get(key) or _EN.get(key) or str(code)


def translator(lang: str) -> Translator:
    """The translator of ``lang`` (English if we do not have it)."""
    return Translator(lang)
