"""Settings, read once at start from the environment (and a ``.env`` file)."""

from __future__ import annotations

import re
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from services.durations import parse_duration, parse_size
from services.errors import BadRequest
from services.fleet import LOCAL, EngineSpec, check_engine, parse_engines

SLACK_USER = re.compile(r"[UW][A-Z0-9]{2,20}")
# the router folder is written into HAProxy's configuration (among it a double-quoted
# lf-string, where $, %, ", "," and ")" mean something) and into runtime API commands
_ROUTER_PATH = re.compile(r"/[A-Za-z0-9._/-]*")
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    docker_host: str = Field(default="unix:///var/run/docker.sock", alias="DOCKER_HOST")
    base_domain: str = Field(default="clonebot.localhost", alias="CLONEBOT_BASE_DOMAIN")
    # the tag names the helper's applets: an engine keeps an older helper image, built once
    helper_image: str = Field(default="clonebot/helper:rsync-10", alias="CLONEBOT_HELPER_IMAGE")
    busybox: Path = Field(default=Path("/bin/busybox"), alias="CLONEBOT_BUSYBOX")
    disk_reserve_bytes: int = Field(default=512 * 1024 * 1024, ge=0, alias="CLONEBOT_DISK_RESERVE")
    freeze_timeout_s: float = Field(default=30.0, gt=0, alias="CLONEBOT_FREEZE_TIMEOUT")
    # an on-clone hook still running after this long fails its clone (services/hooks.py)
    hook_timeout_s: float = Field(default=600.0, gt=0, alias="CLONEBOT_HOOK_TIMEOUT")
    # jobs run at once by every process sharing the database; more wait, saying so
    max_jobs: int = Field(default=4, ge=1, alias="CLONEBOT_MAX_JOBS")
    data_dir: Path = Field(default=Path.home() / ".local/share/clonebot", alias="CLONEBOT_DATA_DIR")
    database_url: str = Field(default="", alias="DATABASE_URL")
    router_bind: str = Field(default="127.0.0.1:8080", alias="CLONEBOT_ROUTER_BIND")
    # the niceness `serve` runs at (lower: sooner on a CPU; the HAProxy it starts keeps the
    # one clonebot was started with): a swap must not wait behind the traffic it moves.
    # Needs root or CAP_SYS_NICE; without, serve runs as started and says so.
    nice: int = Field(default=-10, ge=-20, le=19, alias="CLONEBOT_NICE")
    router_dir: Path | None = Field(default=None, alias="CLONEBOT_ROUTER_DIR")
    # HTTPS: the router also listens here and terminates TLS (unset: plain HTTP only)
    router_tls_bind: str | None = Field(default=None, alias="CLONEBOT_ROUTER_TLS_BIND")
    # a PEM file with the chain and key of *.<base domain>: the internal domains' certificate
    tls_wildcard_cert: Path | None = Field(default=None, alias="CLONEBOT_TLS_WILDCARD_CERT")
    # refuse a TLS handshake whose SNI names no certificate, rather than serve the default one
    tls_strict_sni: bool = Field(default=False, alias="CLONEBOT_TLS_STRICT_SNI")
    # the max-age (seconds) of a domain's HSTS when whoever turns it on names none: a year
    hsts_max_age: int = Field(default=31_536_000, ge=0, le=2**31 - 1, alias="CLONEBOT_HSTS_MAX_AGE")
    # ACME (RFC 8555): `clonebot cert add DOMAIN --acme` gets a custom domain's certificate
    # from this directory URL, and `serve` renews it (services/traffic/renewals.py); unset: off.
    # Setting it agrees to that CA's terms of service, for the account clonebot registers.
    acme_directory: str | None = Field(default=None, alias="CLONEBOT_ACME_DIRECTORY")
    # the account's contact: where the CA writes about expiry and problems; unset: none
    acme_email: str | None = Field(default=None, alias="CLONEBOT_ACME_EMAIL")
    # a PEM file of the CA certificates that sign the ACME server's own HTTPS certificate
    # (a private or test server's); unset: the system's, through requests (certifi)
    acme_ca_bundle: Path | None = Field(default=None, alias="CLONEBOT_ACME_CA_BUNDLE")
    # how often `serve` looks for ACME certificates due for renewal (services/traffic/renewals.py)
    acme_renew_check_s: float = Field(default=86400.0, gt=0, alias="CLONEBOT_ACME_RENEW_CHECK")
    # "embedded": `clonebot serve` starts and keeps its own HAProxy; "external": an HAProxy
    # run by others reads CLONEBOT_ROUTER_DIR (started with `haproxy -W -S DIR/master.sock
    # -f DIR/haproxy.cfg`), and clonebot only writes the files and talks to its sockets
    router_mode: Literal["embedded", "external"] = Field(
        default="embedded", alias="CLONEBOT_ROUTER_MODE"
    )
    # the external HAProxy's container, when it runs in one: clonebot connects it to the
    # environments' networks and routes to the web nodes' addresses there
    router_container: str | None = Field(default=None, alias="CLONEBOT_ROUTER_CONTAINER")
    # Slack: the bot's token and signing secret; with an app-level token, Socket Mode
    slack_bot_token: str | None = Field(default=None, alias="SLACK_BOT_TOKEN")
    slack_signing_secret: str | None = Field(default=None, alias="SLACK_SIGNING_SECRET")
    slack_app_token: str | None = Field(default=None, alias="SLACK_APP_TOKEN")
    slack_api_url: str = Field(default="https://slack.com/api/", alias="SLACK_API_URL")
    # the playground (bot.playground) plays Slack on 127.0.0.1:PORT: always without
    # SLACK_BOT_TOKEN; with it only when asked, and then instead of Slack
    playground: bool = Field(default=False, alias="CLONEBOT_PLAYGROUND")
    port: int = Field(default=3000, gt=0, lt=65536, alias="PORT")
    http_host: str = Field(default="0.0.0.0", alias="CLONEBOT_HTTP_HOST")
    notify_channel: str | None = Field(default=None, alias="CLONEBOT_NOTIFY_CHANNEL")
    # Slack requests acknowledged and waiting for a worker; past it one is answered "busy"
    slack_queue_limit: int = Field(default=100, ge=1, alias="CLONEBOT_SLACK_QUEUE")
    # a job that took this long also ends with a direct message to whoever asked for it
    dm_after_s: float = Field(default=60.0, ge=0, alias="CLONEBOT_DM_AFTER")
    # log lines: "text" for a person at a terminal, "json" (one object a line) for a collector
    log_format: Literal["text", "json"] = Field(default="text", alias="CLONEBOT_LOG_FORMAT")
    # a clone's life unless its /clone says otherwise (--ttl); "never" keeps clones for ever
    default_ttl: timedelta | None = Field(default=timedelta(days=7), alias="CLONEBOT_DEFAULT_TTL")
    # the longest life (--ttl, an extension) anyone but the source's owner or an admin gives
    max_ttl: timedelta | None = Field(default=timedelta(days=30), alias="CLONEBOT_MAX_TTL")
    # an expired clone is stopped, and deleted this long after ("never": kept stopped)
    expiry_grace: timedelta | None = Field(default=timedelta(days=2), alias="CLONEBOT_EXPIRY_GRACE")
    # a protected environment's change waits this long for its approval, then lapses
    approval_ttl: timedelta = Field(default=timedelta(minutes=30), alias="CLONEBOT_APPROVAL_TTL")
    # how often `serve` looks for clones to remind of their expiry, stop or delete
    expiry_check_s: float = Field(default=60.0, gt=0, alias="CLONEBOT_EXPIRY_CHECK")
    # a clone without a request through the router this long is stopped until one comes
    # (services/idle.py); "never": clones never sleep
    sleep_after: timedelta | None = Field(default=timedelta(hours=4), alias="CLONEBOT_SLEEP_AFTER")
    # limits per user (admins may exceed): clones, and the data copied into them; unset: none
    max_clones_per_user: int | None = Field(
        default=None, ge=1, alias="CLONEBOT_MAX_CLONES_PER_USER"
    )
    max_bytes_per_user: int | None = Field(default=None, ge=1, alias="CLONEBOT_MAX_BYTES_PER_USER")
    admins: Annotated[frozenset[str], NoDecode] = Field(
        default=frozenset(), alias="CLONEBOT_ADMINS"
    )
    # more Docker engines (services/fleet.py): ``name=url,...``; a tcp:// engine's TLS client
    # files (ca.pem, cert.pem, key.pem), an ssh:// engine's private key (id_ed25519, ...) and
    # known_hosts, are in CLONEBOT_ENGINE_CERTS/<name>/
    engine_certs: Path | None = Field(default=None, alias="CLONEBOT_ENGINE_CERTS")
    engines: str = Field(default="", alias="CLONEBOT_ENGINES")

    @field_validator("admins", mode="before")
    @classmethod
    def _split_admins(cls, value: object) -> object:
        if isinstance(value, str):
            value = {item.strip() for item in value.split(",") if item.strip()}
        for user in value or ():  # type: ignore[attr-defined]
            if not SLACK_USER.fullmatch(user):
                raise ValueError(f"{user!r} is not a Slack user ID (like U012AB3CD)")
        return value

    @field_validator(
        "default_ttl", "max_ttl", "expiry_grace", "sleep_after", "approval_ttl", mode="before"
    )
    @classmethod
    def _duration(cls, value: object) -> object:
        """The project's grammar (``services.durations``): ``3d``, ``12h``, ``never``."""
        if not isinstance(value, str):
            return value
        try:
            return parse_duration(value, what="the duration")
        except BadRequest as exc:
            raise ValueError(exc.message) from None

    @field_validator("max_bytes_per_user", mode="before")
    @classmethod
    def _size(cls, value: object) -> object:
        """``20G``, ``500M`` (``services.durations``); empty: no limit."""
        if not isinstance(value, str):
            return value
        if not value.strip():
            return None
        try:
            return parse_size(value, what="the size")
        except BadRequest as exc:
            raise ValueError(exc.message) from None

    @field_validator("disk_reserve_bytes", mode="before")
    @classmethod
    def _reserve(cls, value: object) -> object:
        """Bytes (``536870912``), or with a unit (``512M``, ``2G``)."""
        if not isinstance(value, str) or value.strip().isdigit():
            return value
        try:
            return parse_size(value, what="the size")
        except BadRequest as exc:
            raise ValueError(exc.message) from None

    @field_validator("base_domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        """Compared with domains as ``routing.validate_domain`` keeps them: lower-case ASCII
        (IDNA), no trailing dot. One label (``localhost``) is allowed: it is a suffix. At most
        189 characters, so that ``<env>.<base domain>`` (a name of up to 63) fits in 253."""
        text = value.strip().rstrip(".").lower()
        try:
            ascii_form = text.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"{value!r} is not a domain name") from None
        labels = ascii_form.split(".")
        if len(ascii_form) > 189 or not all(_LABEL.fullmatch(label) for label in labels):
            raise ValueError(
                f"{value!r} is not a domain name (like clonebot.example.com): labels of "
                "letters, digits or hyphens, joined by dots"
            )
        return ascii_form

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if value and not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("use sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DB")
        return value

    @model_validator(mode="after")
    def _defaults_in_data_dir(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{self.data_dir / 'clonebot.db'}"
        if self.router_dir is None:
            where = "CLONEBOT_ROUTER_DIR (unset: CLONEBOT_DATA_DIR/router): "
            self.router_dir = _router_path(self.data_dir / "router", where=where)
        if self.engine_certs is None:
            self.engine_certs = self.data_dir / "engines"
        return self

    @field_validator("engines")
    @classmethod
    def _engines_usable(cls, value: str, info: ValidationInfo) -> str:
        """Every engine named and reachable as ``check_engine`` wants, at start."""
        certs = info.data.get("engine_certs") or info.data["data_dir"] / "engines"
        _engine_specs(value, docker_host="unix:///", certs=certs)
        return value

    def engine_specs(self) -> list[EngineSpec]:
        """``local`` (DOCKER_HOST), then CLONEBOT_ENGINES'."""
        certs = self.engine_certs or self.data_dir / "engines"
        return _engine_specs(self.engines, docker_host=self.docker_host, certs=certs)

    @field_validator("router_dir")
    @classmethod
    def _router_dir(cls, value: Path | None) -> Path | None:
        return None if value is None else _router_path(value)

    @model_validator(mode="after")
    def _slack_complete(self) -> Settings:
        if self.slack_bot_token is None:
            if self.slack_app_token or self.slack_signing_secret:
                raise ValueError("SLACK_BOT_TOKEN is missing: the bot cannot answer without it")
            return self
        if not self.slack_bot_token.startswith("xoxb-"):
            raise ValueError("SLACK_BOT_TOKEN is the bot token, starting with xoxb-")
        if self.slack_app_token is not None and not self.slack_app_token.startswith("xapp-"):
            raise ValueError("SLACK_APP_TOKEN is the app-level token, starting with xapp-")
        if self.slack_app_token is None and not self.slack_signing_secret:
            raise ValueError(
                "SLACK_SIGNING_SECRET is missing: over HTTP every request's signature is "
                "checked (or set SLACK_APP_TOKEN for Socket Mode)"
            )
        return self

    @field_validator("notify_channel")
    @classmethod
    def _channel_id(cls, value: str | None) -> str | None:
        if value and not re.fullmatch(r"[CG][A-Z0-9]{2,20}", value):
            raise ValueError(f"{value!r} is not a Slack channel ID (like C012AB3CD)")
        return value or None

    @field_validator("slack_api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("use the Web API's address, like https://slack.com/api/")
        return value if value.endswith("/") else value + "/"

    @model_validator(mode="after")
    def _container_is_external(self) -> Settings:
        if self.router_container and self.router_mode != "external":
            raise ValueError(
                "CLONEBOT_ROUTER_CONTAINER names an HAProxy run by others: "
                "set CLONEBOT_ROUTER_MODE=external too"
            )
        return self

    @property
    def router_port(self) -> int:
        """The port sites are reached on through the router (links carry it unless it is 80)."""
        return int(self.router_bind.rpartition(":")[2])

    @field_validator("router_bind")
    @classmethod
    def _host_and_port(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("use HOST:PORT, like 127.0.0.1:8080")
        return value

    @field_validator("acme_directory")
    @classmethod
    def _acme_url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https://[^\s/]+(/\S*)?", value):
            raise ValueError("use the ACME directory's https:// URL (RFC 8555 §7.1.1)")
        return value

    @field_validator("acme_email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[^@\s:,]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}", value):
            raise ValueError(f"{value!r} is not an email address (like ops@example.com)")
        return value

    @model_validator(mode="after")
    def _acme_complete(self) -> Settings:
        if self.acme_directory is None:
            for name, value in (
                ("CLONEBOT_ACME_EMAIL", self.acme_email),
                ("CLONEBOT_ACME_CA_BUNDLE", self.acme_ca_bundle),
            ):
                if value is not None:
                    raise ValueError(f"{name} is for ACME: set CLONEBOT_ACME_DIRECTORY too")
        if self.acme_ca_bundle is not None and not self.acme_ca_bundle.is_file():
            raise ValueError(f"CLONEBOT_ACME_CA_BUNDLE: {self.acme_ca_bundle} is not a file")
        return self

    @field_validator(
        "router_tls_bind", "tls_wildcard_cert", "acme_directory", "acme_email", "acme_ca_bundle",
        mode="before",
    )  # fmt: skip
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("router_tls_bind")
    @classmethod
    def _tls_host_and_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("use HOST:PORT, like 127.0.0.1:8443")
        return value

    @model_validator(mode="after")
    def _tls_complete(self) -> Settings:
        if self.router_tls_bind is None:
            for name, value in (
                ("CLONEBOT_TLS_WILDCARD_CERT", self.tls_wildcard_cert),
                ("CLONEBOT_TLS_STRICT_SNI", self.tls_strict_sni or None),
            ):
                if value is not None:
                    raise ValueError(f"{name} is for HTTPS: set CLONEBOT_ROUTER_TLS_BIND too")
            return self
        if self.router_tls_bind == self.router_bind:
            raise ValueError("CLONEBOT_ROUTER_TLS_BIND must differ from CLONEBOT_ROUTER_BIND")
        if self.tls_wildcard_cert is not None:
            # here, not at the top: services.traffic.certificates reads the settings' module itself
            from services.traffic.certificates import check_wildcard

            try:
                check_wildcard(self.tls_wildcard_cert, base_domain=self.base_domain)
            except BadRequest as exc:
                raise ValueError(f"CLONEBOT_TLS_WILDCARD_CERT: {exc.message}") from None
        return self


def _router_path(path: Path, *, where: str = "") -> Path:
    """The router folder, if HAProxy's configuration and runtime commands can name it as it is
    (``where``: which setting it came from, when the error's place does not say it)."""
    if not _ROUTER_PATH.fullmatch(str(path)):
        raise ValueError(
            f"{where}{str(path)!r} is not an absolute path of letters, digits and . _ / - "
            "alone (HAProxy's configuration and runtime commands name it as it is)"
        )
    return path


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def _engine_specs(engines: str, *, docker_host: str, certs: Path) -> list[EngineSpec]:
    """``local``, then each of ``engines`` (a tcp:// one's TLS files, an ssh:// one's key, in
    ``certs/<name>``)."""
    specs = [EngineSpec(LOCAL, docker_host)]
    try:
        for item in parse_engines(engines):
            tls = None if item.url.startswith("unix:") else certs / item.name
            specs.append(check_engine(item.name, item.url, tls))
    except BadRequest as exc:
        raise ValueError(exc.message) from None
    names = [s.name for s in specs]
    if twice := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"{', '.join(twice)} named twice ({LOCAL} is DOCKER_HOST)")
    return specs
