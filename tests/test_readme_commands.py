"""The README's scoring commands, run as written on the files the repository ships."""

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from detector.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text("utf-8")

pytestmark = pytest.mark.slow


def _score_command(pattern):
    match = re.search(pattern, README)
    assert match, f"README no longer contains a command matching {pattern!r}"
    return match.group(1).split()


def test_quick_start_scores_shipped_sample(tmp_path, monkeypatch):
    arguments = _score_command(r"\.venv/bin/fairuse (score detector/samples/\S+ --out out/decisions\.jsonl)")
    monkeypatch.chdir(tmp_path)
    sample = ROOT / arguments[1]

    result = CliRunner().invoke(main, ["score", str(sample), *arguments[2:]])

    assert result.exit_code == 0, result.output
    assert (tmp_path / "fairuse.db").is_file()
    assert (tmp_path / "out" / "decisions.jsonl").read_text().count("\n") > 10
    assert (tmp_path / "out" / "decisions.subjects.jsonl").read_text().count("\n") == 200


def test_real_traffic_command_finds_automation(tmp_path, monkeypatch):
    arguments = _score_command(r"\.venv/bin/fairuse (score tests/data/real/\S+ --db sqlite:///out/real\.db --out out/real\.jsonl)")
    monkeypatch.chdir(tmp_path)

    result = CliRunner().invoke(main, ["score", str(ROOT / arguments[1]), *arguments[2:]])

    assert result.exit_code == 0, result.output
    findings = (tmp_path / "out" / "real.findings.jsonl").read_text()
    assert findings.count('"reason":"automation"') >= 10
    assert (tmp_path / "out" / "real.jsonl").read_text() == ""
    assert "no decisions on this input" in result.output
