"""mask_url: the one place URLs lose their passwords before they are shown."""

from __future__ import annotations

import pytest

from fastapi_taskflow.di import TaskflowSettings
from fastapi_taskflow.di.settings import RedisURL
from fastapi_taskflow.errors import ConfigurationError
from fastapi_taskflow.urls import mask_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("redis://:s3cret@host:6380/2", "redis://:***@host:6380/2"),
        ("rediss://user:s3cret@host/1", "rediss://user:***@host/1"),
        ("redis://user@host/1", "redis://user@host/1"),
        ("redis://host/0?password=s3cret&ssl=1", "redis://host/0?password=***&ssl=1"),
        ("redis://u:a@b@host/0?password=x", "redis://u:***@host/0?password=***"),
        ("redis://:s3cret@[::1]:6379/0", "redis://:***@[::1]:6379/0"),
        ("redis://:s3cret@Cache.Example:6379/0", "redis://:***@Cache.Example:6379/0"),
        ("unix:///tmp/redis.sock?password=s3cret&db=2", "unix:///tmp/redis.sock?password=***&db=2"),
    ],
)
def test_mask_url_hides_userinfo_and_query_passwords(url: str, shown: str) -> None:
    """The password in the authority and in a password= query both become ***; the rest stays."""
    assert mask_url(url) == shown


def test_settings_redis_url_masks_query_passwords_too() -> None:
    """A RedisURL in the settings shows a ?password= masked, like the backend's describe()."""
    url = RedisURL.parse("redis://host:6379/0?password=s3cret")
    assert "s3cret" not in repr(url)
    assert url.masked() == "redis://host:6379/0?password=***"


def test_settings_errors_and_dumps_mask_query_passwords() -> None:
    """A ?password= in backend.redis.url never shows in a config error or in masked_dump()."""
    with pytest.raises(ConfigurationError) as caught:
        TaskflowSettings.from_mapping({"backend": {"redis": {"url": "http://h/0?password=S3CRET"}}})
    assert "S3CRET" not in str(caught.value)
    assert "http://h/0?password=***" in str(caught.value)
    settings = TaskflowSettings.from_mapping(
        {"backend": {"kind": "redis", "redis": {"url": "redis://h:6379/0?password=S3CRET"}}}
    )
    assert settings.masked_dump()["backend"]["redis"]["url"] == "redis://h:6379/0?password=***"
