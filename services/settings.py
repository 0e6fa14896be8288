"""Settings, read once at start from the environment (and a ``.env`` file)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    docker_host: str = Field(default="unix:///var/run/docker.sock", alias="DOCKER_HOST")
    base_domain: str = Field(default="clonebot.localhost", alias="CLONEBOT_BASE_DOMAIN")
    helper_image: str = Field(default="clonebot/helper:busybox", alias="CLONEBOT_HELPER_IMAGE")
    busybox: Path = Field(default=Path("/bin/busybox"), alias="CLONEBOT_BUSYBOX")
    disk_reserve_bytes: int = Field(default=512 * 1024 * 1024, ge=0, alias="CLONEBOT_DISK_RESERVE")
    freeze_timeout_s: float = Field(default=30.0, gt=0, alias="CLONEBOT_FREEZE_TIMEOUT")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
