"""The message catalogues of the console and the desk (ADR 26): every key in every
language, the same placeholders, the plural forms each language needs, CLDR's plural
rules, and no user-visible English left in a template."""

from __future__ import annotations

import re
import string
from pathlib import Path
from types import ModuleType

import pytest

from broker.console import i18n as console
from clients import desk_strings as desk

APPS: dict[str, tuple[ModuleType, Path]] = {
    "console": (console, Path(console.__file__).parent.parent / "data" / "console"),
    "desk": (desk, Path(desk.__file__).parent / "data" / "desk"),
}

# CLDR 46 plurals.xml, the integer samples of each category (cardinal).
CLDR_SAMPLES: dict[str, dict[str, tuple[int, ...]]] = {
    "en": {"one": (1,), "other": (0, 2, 3, 16, 100, 1000, 10000, 100000, 1000000)},
    "nl": {"one": (1,), "other": (0, 2, 3, 16, 100, 1000, 10000, 100000, 1000000)},
    "es": {
        "one": (1,),
        "many": (1000000, 2000000, 10000000, 100000000),
        "other": (0, 2, 16, 100, 1000, 10000, 100000, 1000001, 999999),
    },
    "fr": {
        "one": (0, 1),
        "many": (1000000, 2000000, 10000000, 100000000),
        "other": (2, 3, 16, 100, 1000, 10000, 100000, 1000001, 999999),
    },
}


def _names(text: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(text) if f}


def _catalogs(module: ModuleType) -> dict[str, dict[str, str]]:
    catalogs: dict[str, dict[str, str]] = module._load(module.CATALOG_DIR)
    return catalogs


@pytest.mark.parametrize(("lang", "form", "n"), [
    (lang, form, n)
    for lang, forms in CLDR_SAMPLES.items()
    for form, samples in forms.items()
    for n in samples
])  # fmt: skip
def test_plural_rules_follow_cldr(lang: str, form: str, n: int) -> None:
    assert console.plural_form(lang, n) == form
    assert desk.plural_form(lang, n) == form  # the desk's copy of the loader agrees
    assert set(CLDR_SAMPLES[lang]) == set(console.PLURAL_FORMS[lang])


def test_both_copies_have_the_same_languages_and_rules() -> None:
    assert console.LANGS == desk.LANGS == ("en", "es", "fr", "nl")
    assert console.PLURAL_FORMS == desk.PLURAL_FORMS
    for lang in console.LANGS:
        assert [console.plural_form(lang, n) for n in range(2001)] == [
            desk.plural_form(lang, n) for n in range(2001)
        ]


@pytest.mark.parametrize("app", sorted(APPS))
def test_every_key_in_every_language_with_the_same_placeholders(app: str) -> None:
    module, _ = APPS[app]
    catalogs = _catalogs(module)
    en = catalogs["en"]
    plurals = {k[: -len(".other")] for k in en if k.endswith(".other")}
    assert plurals == {k[: -len(".one")] for k in en if k.endswith(".one")}
    plain = {k for k in en if k.rsplit(".", 1)[0] not in plurals}
    for lang, catalog in catalogs.items():
        needed = plain | {f"{b}.{f}" for b in plurals for f in module.PLURAL_FORMS[lang]}
        assert sorted(needed - set(catalog)) == [], f"{app} {lang}: missing"
        assert sorted(set(catalog) - needed) == [], f"{app} {lang}: not in English"
        order = [k for k in catalog if not k.endswith(".many")]
        assert order == list(en), f"{app} {lang}: keys in another order than English"
        for key, text in catalog.items():
            assert text.strip(), f"{app} {lang} {key}: empty"
            base = key.rsplit(".", 1)[0]
            if base in plurals:
                want = _names(en[f"{base}.other"])
                got = _names(text)
                # A singular may say "the first" instead of "the first {n}".
                assert want - {"n"} <= got <= want, f"{app} {lang} {key}: {got} vs {want}"
            else:
                assert _names(text) == _names(en[key]), f"{app} {lang} {key}"
            text.format(**{name: 1 for name in _names(text)})  # no stray brace


@pytest.mark.parametrize("app", sorted(APPS))
def test_translations_are_not_english_left_in_place(app: str) -> None:
    """Most strings differ from English; the ones that may not are words shared by the
    languages (names of languages, "Sector", "TLP", markings...). A copied catalogue fails."""
    module, _ = APPS[app]
    catalogs = _catalogs(module)
    en = catalogs["en"]
    for lang in ("es", "fr", "nl"):
        same = [k for k, v in catalogs[lang].items() if en.get(k) == v]
        assert len(same) < len(en) // 8, f"{app} {lang}: {len(same)} strings as in English"


@pytest.mark.parametrize("app", sorted(APPS))
def test_translator_plurals_fallback_and_words(app: str) -> None:
    module, _ = APPS[app]
    key = "admin.shown" if app == "console" else "inbox.count"
    en, es, fr, nl = (module.translator(lang) for lang in ("en", "es", "fr", "nl"))
    assert en(key, n=1) != en(key, n=2)
    assert es(key, n=1) != es(key, n=2)
    assert fr(key, n=0) == fr(key, n=1).replace("1", "0")  # French: 0 is singular
    assert en(key, n=0) == en(key, n=2).replace("2", "0")  # English: 0 is plural
    assert nl(key, n=1) != nl(key, n=2)
    assert fr("no.such.key") == "no.such.key"
    assert module.translator("xx")("skip") == en("skip")
    assert fr.word("topic", "early-warning") == "alerte précoce"
    assert nl.word("topic", "early-warning") == "vroegtijdige waarschuwing"
    assert fr.word("topic", "not-a-topic") == "not-a-topic"  # an unknown code shows itself


# ---------------------------------------------------------------------- templates
_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)
_PRE = re.compile(r"<(pre|code|script|style)\b.*?</\1>", re.S)
_TAG = re.compile(r"<[^>]*>", re.S)
_ATTR = re.compile(r'\b(?:aria-label|title|alt|placeholder)="([^"{]*)"')
# Words that are the same in every language: markings, algorithm and field names.
_ALLOWED = {"TLP", "REL", "TO", "Ed25519", "leaf_hash", "event_id", "data"}


@pytest.mark.parametrize(
    "template",
    sorted(
        (app, str(p.relative_to(folder / "templates")))
        for app, (_, folder) in APPS.items()
        for p in (folder / "templates").rglob("*.html")
    ),
    ids=lambda t: f"{t[0]}:{t[1]}",
)
def test_no_literal_words_in_templates(template: tuple[str, str]) -> None:
    """Every word a page shows comes through ``_``: the text left once Jinja's tags,
    <pre>/<code> blocks (commands) and HTML tags are removed has no word but shared
    tokens, and no label attribute holds a literal word."""
    app, name = template
    html = (APPS[app][1] / "templates" / name).read_text(encoding="utf-8")
    text = _JINJA.sub(" ", html)
    labels = [a for a in _ATTR.findall(text) if re.search(r"[A-Za-z]", a)]
    assert labels == [], f"{name}: literal label attributes"
    text = _TAG.sub(" ", _PRE.sub(" ", text))
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text)) - _ALLOWED
    assert words == set(), f"{name}: literal words {sorted(words)}"
