"""Configuration mistakes are refused before start, by ``taskflow config check`` and at startup
alike, each with the key, where its value came from and why; nothing passes silently."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fastapi_taskflow.cli import build_app
from fastapi_taskflow.di import (
    InvalidConfigurationError,
    TaskflowContainer,
    TaskflowSettings,
    start_resources,
)
from fastapi_taskflow.errors import ConfigurationError

# Each test runs in an empty folder with no TASKFLOW_* variables (tests/unit/conftest.py).
pytestmark = pytest.mark.usefixtures("isolated")


def check(*args: str) -> tuple[int, str, str]:
    """Run ``taskflow config check ARGS``: exit code, stdout, stderr."""
    result = CliRunner().invoke(build_app(), ["config", "check", *args])
    return result.exit_code, result.stdout, result.stderr


# Each of these passed `config check` and then failed startup (or silently misbehaved).
STARTUP_REJECTS = {
    "heartbeat_not_shorter_than_lease": (
        "heartbeat_interval: 30\nlease_ttl: 10\n",
        "heartbeat_interval",
        "must be shorter than lease_ttl",
    ),
    "redis_port_not_a_number": (
        "backend:\n  kind: redis\n  redis:\n    url: redis://127.0.0.1:notaport/0\n",
        "backend.redis.url",
        "Port could not be cast to integer",
    ),
    "redis_port_out_of_range": (
        "backend:\n  redis:\n    url: redis://:pw@h:99999/0\n",
        "backend.redis.url",
        "Port out of range",
    ),
    "redis_database_not_a_number": (
        "backend:\n  redis:\n    url: redis://h:6379/sessions\n",
        "backend.redis.url",
        "database after the host must be a number",
    ),
    "infinite_interval": ("snapshot_interval: .inf\n", "snapshot_interval", "finite number"),
    "nan_timeout": ("drain_timeout: .nan\n", "drain_timeout", "finite number"),
    "empty_queue_name": ("queues:\n  '':\n    concurrency: 2\n", "queues", "at least 1 character"),
    "blank_admin_title": ("admin:\n  title: '  '\n", "admin.title", "should match pattern"),
}


@pytest.mark.parametrize("case", STARTUP_REJECTS, ids=list(STARTUP_REJECTS))
def test_config_check_refuses_what_startup_refuses(isolated: Path, case: str) -> None:
    """`config check` exits 1 naming the key and the file, without a traceback."""
    text, key, reason = STARTUP_REJECTS[case]
    path = isolated / "t.yaml"
    path.write_text(text)
    code, out, err = check(str(path))
    assert code == 1, out
    assert f"  - {key}" in err
    assert reason in err
    assert f"[from {path}]" in err
    assert "Traceback" not in err
    assert "pw" not in err


@pytest.mark.parametrize("case", STARTUP_REJECTS, ids=list(STARTUP_REJECTS))
async def test_container_start_refuses_the_same(isolated: Path, case: str) -> None:
    """The container path (config.from_dict) runs the same check: a ConfigurationError."""
    import yaml

    text, key, reason = STARTUP_REJECTS[case]
    container = TaskflowContainer()
    container.config.from_dict(yaml.safe_load(text))
    with pytest.raises(InvalidConfigurationError) as exc:
        await start_resources(container)
    assert exc.value.problems[0].path.startswith(key)
    assert reason in str(exc.value)


def test_heartbeat_names_both_sources(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The relation names each key's own source (file and environment)."""
    path = isolated / "t.yaml"
    path.write_text("heartbeat_interval: 20\n")
    monkeypatch.setenv("TASKFLOW_LEASE_TTL", "15")
    with pytest.raises(InvalidConfigurationError) as exc:
        TaskflowSettings(path)
    (problem,) = exc.value.problems
    assert problem.path == "heartbeat_interval"
    assert problem.source == str(path)
    assert "lease_ttl (15, from environment variable TASKFLOW_LEASE_TTL)" in problem.reason


def test_tracing_without_opentelemetry_is_refused_by_check(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tracing: true without the otel extra fails config check, as it fails startup."""
    import sys

    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if not installed
    path = isolated / "t.yaml"
    path.write_text("tracing: true\n")
    code, _, err = check(str(path))
    assert code == 1
    assert "tracing: tracing is on but OpenTelemetry is not installed: pip install " in err
    assert f"[from {path}]" in err


@pytest.mark.parametrize("encoding", ["utf-16", "latin-1"])
def test_non_utf8_file_is_named(isolated: Path, encoding: str) -> None:
    """A file that is not UTF-8 is a ConfigurationError naming the file; no traceback."""
    path = isolated / "t.yaml"
    path.write_bytes("admin:\n  title: Tâches\n".encode(encoding))
    with pytest.raises(ConfigurationError) as exc:
        TaskflowSettings(path)
    assert f"[from {path}]" in str(exc.value)
    assert "save it as UTF-8" in str(exc.value)
    code, _, err = check(str(path))
    assert code == 1
    assert "Traceback" not in err
    assert len(err.splitlines()) == 2


def test_non_utf8_dotenv_is_named(isolated: Path) -> None:
    """A .env that is not UTF-8 is a ConfigurationError naming .env; no traceback."""
    (isolated / ".env").write_bytes("TASKFLOW_ADMIN__TITLE=Tâches\n".encode("latin-1"))
    with pytest.raises(InvalidConfigurationError) as exc:
        TaskflowSettings()
    (problem,) = exc.value.problems
    assert problem.source == ".env"
    assert "save it as UTF-8" in problem.reason
    code, _, err = check()
    assert code == 1
    assert "Traceback" not in err


def test_utf8_with_byte_order_mark_is_read(isolated: Path) -> None:
    """A UTF-8 file saved with a byte-order mark (Windows editors) loads."""
    path = isolated / "t.yaml"
    path.write_bytes("max_history: 7\n".encode("utf-8-sig"))
    assert TaskflowSettings(path).max_history == 7


def test_misspelt_environment_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown TASKFLOW_* name is an error with the close match, as a YAML typo is."""
    monkeypatch.setenv("TASKFLOW_MAX_CONCURENT_TASKS", "5")
    monkeypatch.setenv("TASKFLOW_BACKEND_KIND", "redis")
    with pytest.raises(InvalidConfigurationError) as exc:
        TaskflowSettings()
    found = {p.source: p.reason for p in exc.value.problems}
    assert found == {
        "environment variable TASKFLOW_MAX_CONCURENT_TASKS": (
            "unknown key (did you mean TASKFLOW_MAX_CONCURRENT_TASKS?)"
        ),
        "environment variable TASKFLOW_BACKEND_KIND": (
            "unknown key (did you mean TASKFLOW_BACKEND__KIND?)"
        ),
    }
    code, _, err = check()
    assert code == 1
    assert "did you mean TASKFLOW_MAX_CONCURRENT_TASKS?" in err


def test_names_the_project_reads_stay_allowed(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TASKFLOW_CONFIG & co., and any ${TASKFLOW_X} the YAML file mentions, are no mistake."""
    path = isolated / "t.yaml"
    path.write_text(
        "backend:\n  sqlite:\n    path: ${TASKFLOW_SQLITE_PATH:x.db}\n"
        "# encryption: {keys: [${TASKFLOW_OLD_KEY}]}\n"
    )
    for name in ("TASKFLOW_CONFIG", "TASKFLOW_APP", "TASKFLOW_REDIS_URL", "TASKFLOW_VAR_DIR"):
        monkeypatch.setenv(name, str(path) if name == "TASKFLOW_CONFIG" else "x")
    monkeypatch.setenv("TASKFLOW_SQLITE_PATH", "y.db")
    monkeypatch.setenv("TASKFLOW_OLD_KEY", "k")  # mentioned in a comment: allowed too
    (isolated / ".env").write_text("TASKFLOW_CONFIG=other.yaml\n")
    assert TaskflowSettings().backend.sqlite.path == Path("y.db")


def test_unknown_nested_environment_key_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a known group, the unknown key is named with the group's keys."""
    monkeypatch.setenv("TASKFLOW_BACKEND__KINDD", "redis")
    with pytest.raises(InvalidConfigurationError) as exc:
        TaskflowSettings()
    (problem,) = exc.value.problems
    assert problem.path == "backend.kindd"
    assert "did you mean 'kind'" in problem.reason


@pytest.mark.parametrize("text", ["", "# nothing here yet\n"])
def test_empty_yaml_file_warns(isolated: Path, text: str, caplog: pytest.LogCaptureFixture) -> None:
    """An empty file starts on the defaults, but says so."""
    path = isolated / "t.yaml"
    path.write_text(text)
    with caplog.at_level(logging.WARNING, logger="fastapi_taskflow.di"):
        settings = TaskflowSettings(path)
    assert settings.backend.kind == "memory"
    assert [r.getMessage() for r in caplog.records] == [
        f"{path} is empty (or only comments): every setting takes its default "
        "(memory backend, nothing persists, dashboard off)"
    ]


def test_json_output_is_pure_json(isolated: Path) -> None:
    """--format json prints only JSON on stdout; the source line goes to stderr."""
    path = isolated / "t.yaml"
    path.write_text("max_history: 5\n")
    code, out, err = check(str(path), "--format", "json")
    assert code == 0
    assert json.loads(out)["max_history"] == 5
    assert err.startswith(f"# YAML: {path}")


def test_unknown_output_format_is_a_usage_error() -> None:
    """--format xml is refused (exit 2), not silently printed as YAML."""
    code, out, err = check("--format", "xml")
    assert code == 2
    assert out == ""
    assert "must be yaml or json" in err


def test_error_class_is_public() -> None:
    """The error prints under a public module path, and is the project's ConfigurationError."""
    import fastapi_taskflow
    import fastapi_taskflow.di

    assert InvalidConfigurationError.__module__ == "fastapi_taskflow.errors"
    assert fastapi_taskflow.InvalidConfigurationError is InvalidConfigurationError
    assert fastapi_taskflow.di.ConfigurationError is ConfigurationError
    assert issubclass(InvalidConfigurationError, ConfigurationError)
