"""The README's scoring commands, run as written on the files the repository ships."""

import os
import re
import shlex
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from detector.cli import main
from detector.model_registry import list_versions
from detector.model_switch import ModelSwitch, active_version
from detector.policy import load_policy
from detector.store import open_store

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


def _models_loop_lines() -> list[str]:
    """Return the command lines of the README's analysts' loop, without comments."""
    section = README.split("## Models and the analysts' loop", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "README's analysts' loop no longer has a shell block"
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_models_loop_runs_as_written(tmp_path, monkeypatch):
    """Run the analysts' loop line by line. The notebooks run in tests/test_notebooks.py."""
    models = tmp_path / "models"
    shutil.copytree(ROOT / "models", models)
    monkeypatch.setenv("FAIRUSE_MODELS_DIR", str(models))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    outputs = {}

    for line in _models_loop_lines():
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            monkeypatch.setenv(name, value.replace("$PWD", str(tmp_path)))
            continue
        if line.startswith(".venv/bin/jupyter-execute"):
            continue
        arguments = shlex.split(line.removeprefix(".venv/bin/fairuse "))
        result = CliRunner().invoke(main, arguments)
        assert result.exit_code == 0, f"{line}\n{result.output}"
        outputs[" ".join(arguments[:2])] = result.output

    store = open_store(os.environ["FAIRUSE_DATABASE_URL"])
    assert "try-1" in list_versions(models)
    assert "shadow" in outputs["score logs/events.jsonl.gz"]
    assert "try-1" in outputs["models compare"]
    assert active_version(store, models) == "try-1"
    assert ModelSwitch(store, policy=load_policy()).version == "try-1"
