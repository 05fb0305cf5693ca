"""The Chinese catalog covers every message of the console, and the language helpers pick correctly."""

from pathlib import Path

from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.pofile import read_po

from fairuse_console.i18n import gettext_functions, language_from_header

PACKAGE = Path(__file__).resolve().parents[1] / "fairuse_console"
CATALOG = PACKAGE / "locale" / "zh_CN" / "LC_MESSAGES" / "messages.po"


def _extracted_messages() -> set[str]:
    method_map = [("**.py", "python"), ("templates/**.html", "jinja2")]
    keywords = {**DEFAULT_KEYWORDS, "N_": None}
    return {
        message if isinstance(message, str) else message[0]
        for _file, _line, message, _comments, _context in extract_from_dir(str(PACKAGE), method_map, keywords=keywords)
    }


def test_catalog_translates_every_message():
    with CATALOG.open("rb") as source:
        catalog = read_po(source, locale="zh_CN")
    translated = {message.id for message in catalog if message.id and message.string}

    missing = _extracted_messages() - translated

    assert not missing, f"untranslated in {CATALOG.name}: {sorted(missing)}; run pybabel update (docs/review.md)"


def test_chinese_fills_fields():
    translate = gettext_functions("zh_CN")["_"]

    assert translate("Case queue") == "案件队列"
    assert translate("Select case %(id)s", id=7) == "选择案件 7"


def test_english_is_source_text():
    assert gettext_functions("en")["_"]("Case queue") == "Case queue"


def test_accept_language_ranking():
    assert language_from_header("en;q=0.4, zh-TW;q=0.8") == "zh_CN"
    assert language_from_header("fr, de;q=0.9") == "en"
    assert language_from_header("zh;q=0, en") == "en"
    assert language_from_header("") == "en"
    assert language_from_header("zh-CN;q=bad, en;q=0.5") == "en"
