"""The operations settings (redact, encrypt_errors, tracing) from YAML reach the TaskManager."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from fastapi_taskflow import ConfigurationError
from fastapi_taskflow.di.containers import build_cipher, make_task_manager
from fastapi_taskflow.di.settings import TaskflowSettings
from fastapi_taskflow.tracing import TracingHook


def test_yaml_operations_keys_build_a_redacting_tracing_manager(tmp_path: Path) -> None:
    """redact, encrypt_errors and tracing in YAML configure the manager the container builds."""
    path = tmp_path / "taskflow.yaml"
    path.write_text(
        "redact: [password, token]\n"
        "encrypt_errors: true\n"
        "tracing: true\n"
        f"encryption:\n  keys: ['{Fernet.generate_key().decode()}']\n"
    )
    settings = TaskflowSettings(path)
    manager = make_task_manager(settings, cipher=build_cipher(settings.encryption))
    assert manager.privacy is not None
    assert manager.privacy.redactor is not None
    assert manager.privacy.redactor.matches("db_password", "x")
    assert manager.privacy.error_cipher is not None
    assert manager.dispatcher.hooks is not None
    assert any(isinstance(h, TracingHook) for h in manager.dispatcher.hooks.hooks)


def test_encrypt_errors_without_keys_is_a_configuration_error() -> None:
    """encrypt_errors: true with no encryption.keys names the key and the reason."""
    with pytest.raises(ConfigurationError, match=r"encrypt_errors: needs encryption\.keys"):
        TaskflowSettings.from_mapping({"encrypt_errors": True})


def test_defaults_leave_redaction_and_tracing_off() -> None:
    """Without the keys, the manager has no redaction, sealing or tracing."""
    manager = make_task_manager(TaskflowSettings.from_mapping({}))
    assert manager.privacy is None
    assert manager.dispatcher.hooks is None  # no feature on: the attempt's plain path
