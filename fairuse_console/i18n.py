"""English and Simplified Chinese for the console, through gettext catalogs.

The Chinese catalog ships as ``locale/zh_CN/LC_MESSAGES/messages.po`` and is
compiled in memory with Babel when the console starts, so an editable install
needs no build step. A staff member's stored choice wins; otherwise the
browser's ``Accept-Language`` picks, and English is the default.
"""

from __future__ import annotations

import gettext
from collections.abc import Callable
from functools import cache
from io import BytesIO
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

LOCALE_DIR = Path(__file__).resolve().parent / "locale"
LANGUAGES = {"en": "English", "zh_CN": "简体中文"}
DEFAULT_LANGUAGE = "en"


@cache
def translations(language: str) -> gettext.NullTranslations:
    """Return the compiled catalog of ``language``; English is the source text."""
    path = LOCALE_DIR / language / "LC_MESSAGES" / "messages.po"
    if language == DEFAULT_LANGUAGE or not path.exists():
        return gettext.NullTranslations()
    with path.open("rb") as source:
        catalog = read_po(source, locale=language)
    compiled = BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return Translations(fp=compiled)


def language_from_header(accept_language: str | None) -> str:
    """Pick a supported language from an ``Accept-Language`` header, by quality.

    >>> language_from_header("zh-CN,zh;q=0.9,en;q=0.8")
    'zh_CN'
    >>> language_from_header("fr-FR, en;q=0.5")
    'en'
    >>> language_from_header("de, zh;q=0.1")
    'zh_CN'
    """
    ranked: list[tuple[float, int, str]] = []
    for position, part in enumerate((accept_language or "").split(",")):
        tag, _, parameters = part.strip().partition(";")
        quality = 1.0
        if parameters.strip().startswith("q="):
            try:
                quality = float(parameters.strip()[2:])
            except ValueError:
                quality = 0.0
        ranked.append((-quality, position, tag.strip().lower()))
    for negative_quality, _position, tag in sorted(ranked):
        if negative_quality >= 0:
            continue
        if tag == "zh" or tag.startswith("zh-"):
            return "zh_CN"
        if tag == "en" or tag.startswith("en-"):
            return "en"
    return DEFAULT_LANGUAGE


def gettext_functions(language: str) -> dict[str, Callable[..., str]]:
    """Return ``_``, ``gettext`` and ``ngettext`` for templates; keyword arguments fill ``%(name)s`` fields."""
    catalog = translations(language)

    def translate(message: str, **values: object) -> str:
        text = catalog.gettext(message)
        return text % values if values else text

    def translate_plural(singular: str, plural: str, count: int, **values: object) -> str:
        text = catalog.ngettext(singular, plural, count)
        return text % {"num": count, **values}

    return {"_": translate, "gettext": translate, "ngettext": translate_plural}
