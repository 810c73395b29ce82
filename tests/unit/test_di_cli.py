"""``taskflow config check``: the effective configuration, masked, or the error with exit 1."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fastapi_taskflow.cli import build_app


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    """A CLI runner in an empty folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TASKFLOW_CONFIG", raising=False)
    return CliRunner()


def test_check_prints_masked_configuration(runner: CliRunner, tmp_path: Path) -> None:
    """A valid file prints as YAML with the Redis password masked; exit 0."""
    path = tmp_path / "t.yaml"
    path.write_text("backend:\n  kind: redis\n  redis:\n    url: redis://:hunter2@h:1/0\n")
    result = runner.invoke(build_app(), ["config", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert "kind: redis" in result.output
    assert "redis://:***@h:1/0" in result.output
    assert "hunter2" not in result.output


def test_check_json_format(runner: CliRunner) -> None:
    """--format json prints JSON; without a file the defaults are shown."""
    result = runner.invoke(build_app(), ["config", "check", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert '"kind": "memory"' in result.output


def test_check_reports_errors_with_exit_1(runner: CliRunner, tmp_path: Path) -> None:
    """An invalid file prints every problem and exits 1."""
    path = tmp_path / "t.yaml"
    path.write_text("max_histroy: 3\n")
    result = runner.invoke(build_app(), ["config", "check", str(path)])
    assert result.exit_code == 1
    assert "did you mean 'max_history'" in result.output
