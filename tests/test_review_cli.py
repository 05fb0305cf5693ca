"""The review commands end to end: staff, decisions, cases, allowlist and audit, against SQLite and Redis."""

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from detector.cli import main
from detector.review.staff import StaffDirectory
from detector.store import open_store
from fairuse_gateway import DecisionClient
from tests.conftest import REDIS_URL
from tests.review_support import PASSWORD, add_staff, policy_decision

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def run(sqlite_url, redis_prefix):
    runner = CliRunner()
    add_staff(open_store(sqlite_url).engine, "carol", "reviewer")

    def invoke(*arguments, stdin=None):
        acting = {"add", "delete", "resolve", "open", "note", "remove"}
        extra = ["--db", sqlite_url]
        if acting & set(arguments[:2]) and arguments[0] != "staff":
            extra += ["--prefix", redis_prefix, "--staff", "carol"]
        return runner.invoke(main, [*arguments, *extra], input=stdin)

    return invoke


@pytest.fixture
def gateway(redis_prefix):
    return DecisionClient(REDIS_URL, prefix=redis_prefix, cache_seconds=0.0)


def test_staff_add_hashes_password(run, sqlite_url):
    result = run("staff", "add", "dora", "--role", "viewer", "--password-stdin", stdin=PASSWORD + "\n")

    assert result.exit_code == 0, result.output
    assert "staff dora added as viewer" in result.output
    directory = StaffDirectory(open_store(sqlite_url).engine)
    assert directory.authenticate("dora", PASSWORD).role == "viewer"
    assert directory.authenticate("dora", "wrong password") is None
    listed = run("staff", "list")
    assert "dora\tviewer" in listed.output


def test_staff_add_rejects_short_password(run):
    result = run("staff", "add", "dora", "--password-stdin", stdin="short\n")

    assert result.exit_code == 2
    assert "password too short for 'dora'" in result.output


def test_staff_add_rejects_chinese_name(run):
    result = run("staff", "add", "王芳", "--password-stdin", stdin=PASSWORD + "\n")

    assert result.exit_code == 2
    assert "invalid staff name '王芳'" in result.output
    assert "ASCII letters" in result.output


def test_staff_add_without_terminal_needs_stdin_flag(run, sqlite_url):
    result = run("staff", "add", "dora", stdin="")

    assert result.exit_code == 2
    assert "standard input is not a terminal" in result.output
    assert "--password-stdin" in result.output
    assert "Traceback" not in result.output
    assert StaffDirectory(open_store(sqlite_url).engine).authenticate("dora", PASSWORD) is None


def test_lists_print_header_only_on_terminal(run, monkeypatch):
    import detector.review.cli as review_cli

    piped = run("staff", "list")
    monkeypatch.setattr(review_cli, "_stdout_is_terminal", lambda: True)
    on_terminal = run("staff", "list")

    assert piped.output.splitlines()[0].startswith("carol\t")
    assert on_terminal.output.splitlines()[0] == "name\trole\tconsole language"
    assert on_terminal.output.splitlines()[1].startswith("carol\t")


def test_decisions_add_list_delete(run, gateway):
    added = run("decisions", "add", "key", "key-9", "--action", "throttle", "--limit-rpm", "3", "--duration", "2h",
                "--comment", "scraping")
    assert added.exit_code == 0, added.output
    decision_id = added.output.split()[1].rstrip(":")
    assert gateway.check(key_id="key-9").limit_rpm == 3

    listed = run("decisions", "list", "--active")
    assert decision_id in listed.output
    assert "staff:carol" in listed.output

    deleted = run("decisions", "delete", decision_id, "--comment", "mistake")
    assert deleted.exit_code == 0, deleted.output
    assert gateway.check(key_id="key-9").action == "allow"
    assert decision_id not in run("decisions", "list", "--active").output
    assert "ended" in run("decisions", "list", "--subject", "key-9").output


def test_decision_stamped_ahead_listed_in_force(run, sqlite_url):
    # A gateway clock running ahead stamps the event later than now, so the decision applies from when it was stored.
    ahead = replace(policy_decision("key-ahead", action="suspend", ident="suspend-ahead"),
                    detected_at=datetime.now(UTC) + timedelta(minutes=30))
    open_store(sqlite_url).save_decisions([ahead])

    listed = run("decisions", "list", "--active")

    assert "suspend-ahead" in listed.output
    assert "in force" in listed.output


def test_decisions_add_bad_duration(run):
    result = run("decisions", "add", "key", "k", "--action", "suspend", "--duration", "forever", "--comment", "x")

    assert result.exit_code == 2
    assert "invalid duration 'forever'" in result.output


def test_review_list_show_resolve(run, sqlite_url, gateway):
    open_store(sqlite_url).save_decisions([
        policy_decision("key-a", score=90, ident="ra"), policy_decision("key-b", score=60, ident="rb"),
    ])

    listed = run("review", "list")
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert lines[0].startswith("1\tkey:key-a")
    assert lines[1].startswith("2\tkey:key-b")

    shown = run("review", "show", "1")
    assert "case 1: key:key-a" in shown.output
    assert '"networks": 4' in shown.output

    suspended = run("review", "resolve", "1", "--action", "suspend", "--duration", "6h", "--comment", "resold")
    assert suspended.exit_code == 0, suspended.output
    assert gateway.check(key_id="key-a").action == "suspend"
    dismissed = run("review", "resolve", "2", "--action", "dismiss", "--comment", "fine")
    assert dismissed.exit_code == 0, dismissed.output

    assert run("review", "list").output == ""
    resolved = run("review", "list", "--status", "resolved", "--sort", "score", "--asc").output.splitlines()
    assert "resolved dismissed" in resolved[0]
    assert "resolved suspended" in resolved[1]
    assert "verdict" in run("review", "show", "2").output


def test_review_resolve_needs_duration(run, sqlite_url):
    open_store(sqlite_url).save_decisions([policy_decision("key-a")])
    run("review", "list")

    result = run("review", "resolve", "1", "--action", "throttle", "--comment", "x")

    assert result.exit_code == 2
    assert "needs --duration" in result.output


def test_review_open_and_note(run):
    opened = run("review", "open", "account", "acct-1", "--comment", "ticket")
    noted = run("review", "note", "1", "customer replied")

    assert opened.exit_code == 0, opened.output
    assert noted.exit_code == 0, noted.output
    assert "customer replied" in run("review", "show", "1").output
    assert run("review", "show", "7").exit_code == 2


def test_allowlist_commands(run, sqlite_url, policy, plans):
    added = run("allowlist", "add", "key", "key-p", "--duration", "30d", "--comment", "partner")
    assert added.exit_code == 0, added.output
    assert "key:key-p" in run("allowlist", "list").output

    removed = run("allowlist", "remove", "1", "--comment", "ended")
    assert removed.exit_code == 0, removed.output
    assert run("allowlist", "list").output == ""
    assert "removed" in run("allowlist", "list", "--all").output
    assert run("allowlist", "remove", "1", "--comment", "again").exit_code == 2


def test_audit_command(run):
    run("decisions", "add", "key", "key-9", "--action", "suspend", "--duration", "1h", "--comment", "fraud")

    plain = run("audit")
    as_json = [json.loads(line) for line in run("audit", "--json").output.splitlines()]

    assert "carol\tadd_decision\tkey:key-9" in plain.output
    assert as_json[0]["reason"] == "fraud"
    assert as_json[0]["after"]["in_force"][0]["action"] == "suspend"
    assert run("audit", "--staff", "nobody").output == ""


def test_resolve_refuses_whole_bulk_naming_each_resolved_case(run, sqlite_url):
    open_store(sqlite_url).save_decisions([policy_decision(f"key-{name}", ident=f"r{name}") for name in "abc"])
    run("review", "list")
    run("review", "resolve", "2", "--action", "dismiss", "--comment", "fine")

    refused = run("review", "resolve", "1", "2", "3", "--action", "dismiss", "--comment", "batch")
    repeated = run("review", "resolve", "1", "1", "3", "--action", "dismiss", "--comment", "batch")

    assert refused.exit_code == 2
    assert "case 2 was already resolved by carol at" in refused.output
    assert "nothing was changed" in refused.output
    assert repeated.exit_code == 0, repeated.output
    assert repeated.output.splitlines() == ["case 1 resolved: dismiss", "case 3 resolved: dismiss"]


def test_limit_beyond_range_is_a_clear_error(run, sqlite_url):
    for limit in ("99999999999999999999", str(2**63 - 1), "1000001"):
        result = run("decisions", "add", "key", "key-9", "--action", "throttle", "--limit-rpm", limit,
                     "--duration", "1h", "--comment", "x")

        assert result.exit_code == 2, result.output
        assert "1<=x<=1000000" in result.output
        assert "Traceback" not in result.output
    assert run("decisions", "list").output == ""


def test_ip_subject_canonical_and_checked(run, gateway):
    added = run("decisions", "add", "ip", "2001:DB8:0:0:0:0:0:99", "--action", "suspend", "--duration", "1h",
                "--comment", "abuse")
    wrong = run("decisions", "add", "ip", "not-an-ip", "--action", "suspend", "--duration", "1h", "--comment", "x")
    allowlisted = run("allowlist", "add", "ip", "::ffff:198.51.100.7", "--duration", "1d", "--comment", "office")

    assert added.exit_code == 0, added.output
    assert "ip:2001:db8::99 until" in added.output
    assert gateway.check(ip="2001:DB8:0:0:0:0:0:99").action == "suspend"
    assert "ip:2001:db8::99" in run("decisions", "list", "--subject", "2001:db8:0::99").output
    assert wrong.exit_code == 2
    assert "invalid ip subject 'not-an-ip'" in wrong.output
    assert "ip:198.51.100.7 until" in allowlisted.output


def test_control_character_and_long_subject(run):
    control = run("decisions", "add", "key", "a\x01b", "--action", "suspend", "--duration", "1h", "--comment", "x")
    long = run("decisions", "add", "key", "k" * 5000, "--action", "suspend", "--duration", "1h", "--comment", "x")

    assert control.exit_code == 2
    assert "control character U+0001" in control.output
    assert long.exit_code == 2
    assert "(5000 characters)" in long.output
    assert len(long.output) < 300
    assert run("decisions", "list").output == ""


def test_acting_staff_must_be_a_reviewer_or_admin(sqlite_url, redis_prefix):
    add_staff(open_store(sqlite_url).engine, "vic", "viewer")
    runner = CliRunner()
    command = ["decisions", "add", "key", "key-9", "--action", "suspend", "--duration", "1h", "--comment", "x",
               "--db", sqlite_url, "--prefix", redis_prefix]

    unknown = runner.invoke(main, command, env={"FAIRUSE_STAFF": "nobody<script>"})
    viewer = runner.invoke(main, [*command, "--staff", "vic"])

    assert unknown.exit_code == 2
    assert "staff member 'nobody<script>' not found" in unknown.output
    assert "fairuse staff add" in unknown.output
    assert viewer.exit_code == 2
    assert "'vic' is a viewer and may not act" in viewer.output
    assert runner.invoke(main, ["decisions", "list", "--db", sqlite_url]).output == ""


@pytest.mark.slow
def test_readme_review_commands_after_quick_start(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text("utf-8")
    section = readme.split("## Staff review", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.removeprefix(".venv/bin/fairuse ").split() for line in section.strip().splitlines()]
    assert [command[:2] for command in commands] == [["staff", "add"], ["review", "list"], ["console"]]
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    scored = runner.invoke(main, ["score", str(ROOT / "detector/samples/events-sample.jsonl.gz"), "--no-model"])
    assert scored.exit_code == 0, scored.output

    added = runner.invoke(main, commands[0], input=f"{PASSWORD}\n{PASSWORD}\n")
    listed = runner.invoke(main, commands[1])

    assert added.exit_code == 0, added.output
    assert "staff alice added as reviewer" in added.output
    assert listed.exit_code == 0, listed.output
    assert len(listed.output.splitlines()) >= 5
    assert "\tkey:key-" in listed.output


def test_console_rejects_unknown_time_zone(run):
    result = run("console", "--time-zone", "Mars/Olympus")

    assert result.exit_code == 2
    assert "unknown time zone 'Mars/Olympus'" in result.output
