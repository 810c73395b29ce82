"""TaskflowSettings: sources, precedence, ${VAR}, and one clear error for every bad key."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from fastapi_taskflow.di import InvalidConfigurationError, TaskflowSettings
from fastapi_taskflow.errors import ConfigurationError

ROOT = Path(__file__).resolve().parents[2]


# Each test runs in an empty folder with no TASKFLOW_* variables (tests/unit/conftest.py).
pytestmark = pytest.mark.usefixtures("isolated")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def problems(exc: pytest.ExceptionInfo[ConfigurationError]) -> dict[str, tuple[str, str]]:
    assert isinstance(exc.value, InvalidConfigurationError)
    return {p.path: (p.source, p.reason) for p in exc.value.problems}


def test_defaults_without_any_file() -> None:
    """No config/taskflow.yaml: the defaults (memory backend) load without error."""
    settings = TaskflowSettings()
    assert settings.backend.kind == "memory"
    assert settings.snapshot_interval == 60.0


def test_default_file_is_read(isolated: Path) -> None:
    """config/taskflow.yaml in the working folder is the default YAML file."""
    write(isolated / "config/taskflow.yaml", "backend:\n  kind: sqlite\nrequeue_pending: true\n")
    settings = TaskflowSettings()
    assert settings.backend.kind == "sqlite"
    assert settings.requeue_pending is True


def test_taskflow_config_names_the_file(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TASKFLOW_CONFIG points at another YAML file."""
    path = write(isolated / "other.yaml", "max_history: 5\n")
    monkeypatch.setenv("TASKFLOW_CONFIG", str(path))
    assert TaskflowSettings().max_history == 5


def test_environment_beats_yaml_and_kwargs_beat_environment(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keyword arguments > environment (with __ nesting) > YAML."""
    path = write(isolated / "t.yaml", "backend:\n  kind: sqlite\nmax_history: 5\n")
    monkeypatch.setenv("TASKFLOW_BACKEND__KIND", "redis")
    monkeypatch.setenv("TASKFLOW_MAX_HISTORY", "7")
    settings = TaskflowSettings(path, max_history=9)
    assert settings.backend.kind == "redis"
    assert settings.max_history == 9


def test_dotenv_file_is_read(isolated: Path) -> None:
    """TASKFLOW_* lines of .env are a source, weaker than the environment."""
    write(isolated / ".env", "TASKFLOW_SNAPSHOT_INTERVAL=3\nOTHER_APP_SETTING=x\n")
    assert TaskflowSettings().snapshot_interval == 3.0


def test_yaml_reads_environment_variables(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """${VAR} and ${VAR:default} inside YAML read the environment."""
    monkeypatch.setenv("DB_PATH", "/data/t.db")
    text = "backend:\n  sqlite:\n    path: ${DB_PATH}\nmax_history: ${HISTORY:42}\n"
    settings = TaskflowSettings(write(isolated / "t.yaml", text))
    assert settings.backend.sqlite.path == Path("/data/t.db")
    assert settings.max_history == 42


def test_every_problem_in_one_error(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unknown keys, wrong types and bad env values are all named, each with its source."""
    text = "bakend:\n  kind: redis\nbackend:\n  kind: mongo\nloggers:\n  - type: file\n    pth: x\n"
    path = write(isolated / "t.yaml", text)
    monkeypatch.setenv("TASKFLOW_SNAPSHOT_INTERVAL", "soon")
    with pytest.raises(ConfigurationError) as exc:
        TaskflowSettings(path)
    found = problems(exc)
    assert found["bakend"] == (str(path), "unknown key 'bakend' (did you mean 'backend'?)")
    assert found["backend.kind"][0] == str(path)
    assert "'mongo'" in found["backend.kind"][1]
    assert "did you mean 'path'" in found["loggers[0].pth"][1]
    assert found["snapshot_interval"][0] == "environment variable TASKFLOW_SNAPSHOT_INTERVAL"


def test_unparsable_environment_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """An env value that is not valid JSON for a list/dict field names the variable."""
    monkeypatch.setenv("TASKFLOW_QUEUES", "{emails: 3")
    with pytest.raises(ConfigurationError) as exc:
        TaskflowSettings()
    source, reason = problems(exc)["queues"]
    assert source == "environment variable TASKFLOW_QUEUES"
    assert "JSON" in reason


def test_nested_environment_type_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A nested variable that has the wrong type is named by its full name."""
    monkeypatch.setenv("TASKFLOW_QUEUES__EMAILS__CONCURRENCY", "many")
    with pytest.raises(ConfigurationError) as exc:
        TaskflowSettings()
    source, _ = problems(exc)["queues.emails.concurrency"]
    assert source == "environment variable TASKFLOW_QUEUES__EMAILS__CONCURRENCY"


def test_missing_named_file() -> None:
    """A YAML file named explicitly must exist."""
    with pytest.raises(ConfigurationError, match=r"nope\.yaml does not exist"):
        TaskflowSettings("nope.yaml")


def test_malformed_yaml_names_the_line(isolated: Path) -> None:
    """Malformed YAML is reported with the file and the line."""
    path = write(isolated / "t.yaml", "backend:\n  kind: [sqlite\nmax_history: 3\n")
    with pytest.raises(ConfigurationError, match=r"malformed YAML at line \d+") as exc:
        TaskflowSettings(path)
    assert str(path) in str(exc.value)


def test_yaml_top_level_must_be_a_mapping(isolated: Path) -> None:
    """A YAML list or scalar at the top is refused."""
    with pytest.raises(ConfigurationError, match="must be a mapping"):
        TaskflowSettings(write(isolated / "t.yaml", "- a\n- b\n"))


def test_undefined_variable_is_named(isolated: Path) -> None:
    """${VAR} without a default and without the variable is an error naming both."""
    path = write(isolated / "t.yaml", "backend:\n  redis:\n    url: ${NO_SUCH_REDIS_URL}\n")
    with pytest.raises(ConfigurationError) as exc:
        TaskflowSettings(path)
    source, reason = problems(exc)["backend.redis.url"]
    assert source == str(path)
    assert "NO_SUCH_REDIS_URL is not set" in reason


def test_secrets_never_appear(isolated: Path) -> None:
    """A bad encryption key and a Redis password are never echoed in errors or reprs."""
    text = (
        "encryption:\n  keys: [not-a-key-SECRET1]\n"
        "backend:\n  redis:\n    url: http://u:SECRET2@h/0\n"
    )
    with pytest.raises(ConfigurationError) as exc:
        TaskflowSettings(write(isolated / "t.yaml", text))
    message = str(exc.value)
    assert "encryption.keys: key 0 is not a Fernet key" in message
    assert "SECRET1" not in message
    assert "SECRET2" not in message
    assert "http://u:***@h/0" in message


def test_reprs_and_dumps_mask_secrets() -> None:
    """repr() and masked_dump() show neither keys, passwords nor the URL password."""
    key = Fernet.generate_key().decode()
    settings = TaskflowSettings(
        encryption={"keys": [key]},
        backend={"kind": "redis", "redis": {"url": "redis://:pw-SECRET@h:6379/0"}},
        admin={"auth": {"username": "a", "password": "pass-SECRET"}},
    )
    for text in (repr(settings), str(settings.masked_dump())):
        assert key not in text
        assert "SECRET" not in text
    assert settings.masked_dump()["backend"]["redis"]["url"] == "redis://:***@h:6379/0"
    assert settings.backend.redis.url == "redis://:pw-SECRET@h:6379/0"


def test_from_mapping_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """from_mapping validates the given data only, naming the given source."""
    monkeypatch.setenv("TASKFLOW_MAX_HISTORY", "not-a-number")
    assert TaskflowSettings.from_mapping({"max_history": 3}).max_history == 3
    with pytest.raises(ConfigurationError) as exc:
        TaskflowSettings.from_mapping({"max_hystory": 3}, source="container.config")
    assert problems(exc)["max_hystory"][0] == "container.config"


@pytest.mark.parametrize("name", ["taskflow.yaml", "taskflow.test.yaml"])
def test_shipped_configs_are_valid(name: str) -> None:
    """The YAML files the repository ships load as they are."""
    TaskflowSettings(ROOT / "config" / name)


def test_production_config_needs_its_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The production example loads once its secrets are in the environment."""
    path = ROOT / "config" / "taskflow.production.yaml"
    with pytest.raises(ConfigurationError, match="REDIS_URL is not set"):
        TaskflowSettings(path)
    monkeypatch.setenv("REDIS_URL", "redis://:pw@redis:6379/0")
    monkeypatch.setenv("TASKFLOW_ENCRYPTION_KEY", Fernet.generate_key().decode())
    monkeypatch.setenv("TASKFLOW_ADMIN_PASSWORD", "pw")
    monkeypatch.setenv("TASKFLOW_ADMIN_SECRET", "s" * 32)
    settings = TaskflowSettings(path)
    assert settings.backend.kind == "redis"
    assert len(settings.encryption.keys) == 1


def test_dotenv_typo_is_named(isolated: Path) -> None:
    """An unknown TASKFLOW_* line in .env is refused with the close match and the line name."""
    write(isolated / ".env", "TASKFLOW_MAX_HISTROY=3\n")
    with pytest.raises(ConfigurationError) as exc:
        TaskflowSettings()
    source, reason = problems(exc)["max_histroy"]
    assert source == ".env (TASKFLOW_MAX_HISTROY)"
    assert "did you mean 'max_history'" in reason


def test_the_0_12_registry_keys_load_from_yaml_and_change_nothing(isolated: Path) -> None:
    """instance_url and friends (merged_list_ttl too) in YAML load, reach TaskManager, and
    leave its settings alone."""
    from fastapi_taskflow import TaskManager

    text = (
        "instance_url: http://10.0.0.5:8000\ninstance_tasks_prefix: /tasks\n"
        "registry_ttl: 90\nregistry_heartbeat: 30\nmerged_list_ttl: 2\n"
    )
    write(isolated / "config/taskflow.yaml", text)
    settings = TaskflowSettings()
    assert settings.instance_url == "http://10.0.0.5:8000"
    manager = TaskManager(settings=settings.manager_settings())
    assert manager.settings == TaskManager().settings


def test_admin_settings_follow_task_admin_defaults(isolated: Path) -> None:
    """The DI admin settings default to TaskAdmin's own token lifetime and schema visibility."""
    from fastapi_taskflow.admin.core import TOKEN_EXPIRY

    admin = TaskflowSettings().admin
    assert admin.token_expiry == TOKEN_EXPIRY
    assert admin.include_in_schema is False
    assert admin.read_only_users == []


def test_short_admin_secret_key_is_refused_naming_the_key(isolated: Path) -> None:
    """A secret_key under 32 bytes is refused before start, naming admin.secret_key."""
    with pytest.raises(ConfigurationError) as caught:
        TaskflowSettings(admin={"secret_key": "x" * 20})
    assert "admin.secret_key" in str(caught.value)
    assert "32 bytes" in str(caught.value)
    assert "x" * 20 not in str(caught.value)
