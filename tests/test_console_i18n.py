"""The Chinese catalog covers every message of the console, Chinese pages carry no English fragments, and the language helpers pick correctly."""

import re
from datetime import timedelta
from pathlib import Path

from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.pofile import read_po
from fastapi.testclient import TestClient

from detector.review.actions import StaffActions
from detector.review.cases import CaseQueue
from fairuse_console import create_app
from fairuse_console.i18n import gettext_functions, language_from_header
from tests.review_support import add_staff, csrf_token, log_in, policy_decision
from workers.publish import DecisionPublisher

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
    # Babel compiles without fuzzy entries, so the console shows their English source text.
    translated = {message.id for message in catalog if message.id and message.string and not message.fuzzy}

    missing = _extracted_messages() - translated

    assert not missing, (
        f"untranslated or fuzzy in {CATALOG.name}: {sorted(missing)}; run pybabel update (docs/review.md), "
        "then translate them and remove their fuzzy flags"
    )


def test_catalog_placeholders_match():
    """A translation naming a field its message lacks would raise KeyError while rendering the page."""
    with CATALOG.open("rb") as source:
        catalog = read_po(source, locale="zh_CN")

    problems = {message.id: [str(error) for error in errors] for message, errors in catalog.check()}

    assert not problems, problems


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


def _chinese_console(store, redis_client, redis_prefix) -> TestClient:
    """Return a console client logged in as reviewer rita, whose case 1 is throttled on image endpoints."""
    store.save_decisions([
        policy_decision("key-a", score=90, ident="review-key-a"),
        policy_decision("key-b", score=70, ident="review-key-b"),
    ])
    CaseQueue(store.engine).sync()
    add_staff(store.engine, "rita", "reviewer")
    publisher = DecisionPublisher(redis_client, prefix=redis_prefix)
    StaffActions(store.engine, publisher).throttle(
        1, staff="rita", limit_rpm=10, duration=timedelta(hours=6), comment="图像请求过多", scope="images",
    )
    client = TestClient(create_app(engine=store.engine, publisher=publisher),
                        headers={"Accept-Language": "zh-CN,zh;q=0.9"})
    log_in(client, "rita")
    return client


def test_chinese_case_units_and_scope(store, redis_client, redis_prefix):
    with _chinese_console(store, redis_client, redis_prefix) as client:
        page = client.get("/cases/1").text

    assert "案件 #1：" in page
    assert "限流 每分钟 10 次 （仅图片端点）" in page
    assert "/min" not in page
    assert "(images)" not in page
    assert "已处理（已限流，rita）" in page
    assert "rita（审核员）" in page
    assert "rita：" in page


def test_chinese_allowlist_button_verb(store, redis_client, redis_prefix):
    with _chinese_console(store, redis_client, redis_prefix) as client:
        page = client.get("/cases/2").text

    assert "<strong>加入白名单</strong>" in page
    assert '<button type="submit">加入白名单</button>' in page
    assert '<button type="submit">白名单</button>' not in page


def test_chinese_queue_waiting_hours(store, redis_client, redis_prefix):
    with _chinese_console(store, redis_client, redis_prefix) as client:
        page = client.get("/?status=all").text

    assert re.search(r"<td>\d+ 小时</td>", page)
    assert " h</td>" not in page
    assert "已处理（已限流）" in page


def test_chinese_login_and_subject_terms():
    translate = gettext_functions("zh_CN")["_"]

    assert translate("Name") == "用户名"
    assert translate("Unknown name or wrong password.") == "用户名不存在或密码错误。"
    assert translate("Subject") == "主体"
    assert translate("Subject type") == "主体类型"


def _literals(pattern: str) -> set[str]:
    source = (Path(__file__).resolve().parents[1] / "detector" / "review" / "actions.py").read_text()
    return set(re.findall(pattern, source))


def test_data_words_translated():
    """Words the templates pass to ``_`` from stored rows need a catalog entry too, which extraction cannot see."""
    from detector.decisions import ACTIONS
    from detector.review.cases import SORT_KEYS
    from detector.review.vocabulary import CASE_STATUSES, ROLES

    audit_actions = _literals(r'_audit\(session, now, staff, "(\w+)"') | {"suspend", "throttle"}
    resolutions = _literals(r'_resolve\(case, "(\w+)"')
    resolutions |= _literals(r'_resolve\(case, "\w+" if action == "\w+" else "(\w+)"')
    verdicts = _literals(r'_label\(session, case, "(\w+)"')
    translate = gettext_functions("zh_CN")["_"]

    assert audit_actions >= {"open_case", "note", "lift", "allowlist", "unallowlist", "dismiss"}
    assert resolutions == {"suspended", "throttled", "dismissed", "allowlisted"}
    assert verdicts == {"abuse", "benign"}
    for word in sorted({*ACTIONS, *SORT_KEYS, *CASE_STATUSES, *ROLES, *audit_actions, *resolutions, *verdicts}):
        assert translate(word) != word, f"{word!r} has no Chinese translation; list it in fairuse_console/messages.py and translate it in {CATALOG.name}"


def test_readme_terms_match_console():
    """README.zh-CN.md glosses the field's English terms, so the console must use the same Chinese words."""
    readme = (PACKAGE.parent / "README.zh-CN.md").read_text(encoding="utf-8")
    translate = gettext_functions("zh_CN")["_"]

    for english, source in (("throttle", "Throttle"), ("suspend", "Suspend")):
        assert f"**{english}（{translate(source)}）**" in readme, english
    assert f"{translate('Subject')}（subject）" in readme
    assert "图片额度" in readme
    assert translate("image endpoints").startswith("图片")


def test_chinese_error_pages(store, redis_client, redis_prefix):
    add_staff(store.engine, "vera", "viewer")
    with _chinese_console(store, redis_client, redis_prefix) as client:
        token = csrf_token(client.get("/").text)
        unticked = client.post("/cases/bulk", data={"csrf_token": token, "action": "dismiss", "comment": "正常"})
        stale = client.post("/cases/2/notes", data={"csrf_token": "stale", "body": "备注"})
        staff_page = client.get("/staff")
        client.post("/logout", data={"csrf_token": token})
        log_in(client, "vera")
        viewer = client.post("/cases/2/notes", data={"csrf_token": csrf_token(client.get("/").text), "body": "备注"})

    assert unticked.status_code == 400
    assert "没有勾选案件，请先勾选要处理的案件。" in unticked.text
    assert stale.status_code == 403
    assert "CSRF 令牌缺失或无效" in stale.text
    assert staff_page.status_code == 403
    assert "只有管理员可以管理员工" in staff_page.text
    assert viewer.status_code == 403
    assert "只读员工只能查看" in viewer.text


def test_english_error_names_role(store, redis_client, redis_prefix):
    with _chinese_console(store, redis_client, redis_prefix) as client:
        page = client.get("/staff", headers={"Accept-Language": "en"})

    assert page.status_code == 403
    assert "role &#39;reviewer&#39; cannot manage staff" in page.text



def test_stale_case_error_in_chinese(store, redis_client, redis_prefix):
    with _chinese_console(store, redis_client, redis_prefix) as client:
        page = client.get("/cases/2").text
        seen = re.search(r'name="seen" value="([^"]+)"', page).group(1)
        StaffActions(store.engine, DecisionPublisher(redis_client, prefix=redis_prefix)).add_note(
            2, staff="rita", body="稍等")
        stale = client.post("/cases/2/dismiss", data={"csrf_token": csrf_token(page), "comment": "正常", "seen": seen})

    assert stale.status_code == 409
    assert "案件 2 在您打开之后于" in stale.text
    assert "changed at" not in stale.text


def test_resolved_case_error_in_chinese(store, redis_client, redis_prefix):
    with _chinese_console(store, redis_client, redis_prefix) as client:
        token = csrf_token(client.get("/").text)
        rejected = client.post("/cases/1/suspend", data={"csrf_token": token, "duration": "6h", "comment": "转售"})

    assert rejected.status_code == 409
    assert "案件 1 已由 rita 于" in rejected.text
    assert "结案（已限流）" in rejected.text
    assert "already resolved" not in rejected.text
