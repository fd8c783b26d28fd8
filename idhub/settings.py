"""Service settings, read from ``IDHUB_*`` environment variables."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

log = logging.getLogger(__name__)

DATA_DIR_NAME = "idhub-data"


def find_data_dir(start: Path | None = None) -> Path:
    """Return the data folder used when ``IDHUB_DATA_DIR`` is unset (README "Configuration").

    The nearest ``idhub-data`` folder in the working directory or one of its parents, as git finds
    ``.git``: the CLI run from a subfolder of where ``idhub serve`` runs finds the same database and
    master key. With none found, ``./idhub-data`` (created by ``serve``, ``init`` and ``migrate`` only).
    """
    here = (start or Path.cwd()).absolute()
    for folder in (here, *here.parents):
        candidate = folder / DATA_DIR_NAME
        if candidate.is_dir():
            return candidate
    return here / DATA_DIR_NAME


class TokenSettings(BaseModel):
    """Lifetimes of the tokens idhub issues, in seconds."""

    access_token_ttl: int = Field(default=600, ge=30, le=86400)
    id_token_ttl: int = Field(default=600, ge=30, le=86400)
    authorization_code_ttl: int = Field(default=60, ge=10, le=600)
    refresh_token_ttl: int = Field(default=30 * 86400, ge=300)
    refresh_token_idle_ttl: int = Field(default=14 * 86400, ge=300)
    client_assertion_max_age: int = Field(default=300, ge=30, le=3600)


class SessionSettings(BaseModel):
    """SSO session lifetimes (seconds) and interaction limits."""

    idle_ttl: int = Field(default=30 * 60, ge=60)
    absolute_ttl: int = Field(default=10 * 3600, ge=300)
    interaction_ttl: int = Field(default=15 * 60, ge=60)
    cookie_name: str = "idhub_session"


class ThrottleSettings(BaseModel):
    """Brute-force defence: failures allowed per window before attempts are refused (README "Abuse limits").

    ``max_failures_per_account`` counts one account's failures from one source address (OWASP
    Authentication Cheat Sheet: lock per account *and* source); ``max_unknown_device_failures_per_account``
    is the account's budget for browsers without its device cookie, all addresses together (the bound
    on guessing); a browser holding the device cookie has its own ``max_failures_per_device``.
    ``max_failures_per_address`` limits one address across accounts, for sign-in and client
    authentication alike. A client's failures only slow its next failures down (up to
    ``client_failure_max_delay`` seconds); they never refuse the right secret.
    """

    window_seconds: int = Field(default=15 * 60, ge=1)
    max_failures_per_account: int = Field(default=5, ge=1)
    max_failures_per_address: int = Field(default=50, ge=1)
    max_unknown_device_failures_per_account: int = Field(default=10, ge=1)
    max_failures_per_device: int = Field(default=10, ge=1)
    device_cookie_days: int = Field(default=180, ge=1, le=400)
    client_failure_max_delay: float = Field(default=1.0, ge=0, le=5)
    redis_retry_seconds: float = Field(default=5.0, gt=0)


class PasswordSettings(BaseModel):
    """Argon2id parameters; defaults are OWASP's minimum (m=19 MiB, t=2, p=1)."""

    memory_cost_kib: int = Field(default=19456, ge=19456)
    time_cost: int = Field(default=2, ge=2)
    parallelism: int = Field(default=1, ge=1)


class AuditSettings(BaseModel):
    """Audit log retention, archiving and streaming (README "Audit").

    ``retention_days``: entries older than this move to sealed archive files (``idhub audit archive``);
    ``None`` keeps them in the database forever, as Keycloak keeps events unless an expiration is set:
    how long audit evidence must be kept is a legal decision (a year for PCI DSS 10.5.1, longer
    elsewhere) that idhub should not make silently. A tenant's ``audit_retention_days`` setting
    overrides it. ``sink`` streams committed entries to ``syslog+udp://``, ``syslog+tcp://`` or an
    ``http(s)://`` collector; ``sink_token`` is sent there as a bearer token and never logged.
    """

    retention_days: int | None = Field(default=None, ge=1, le=36500)
    # Also write each committed entry as a log line on the idhub.audit logger (off: one line per token).
    log: bool = False
    archive_dir: Path | None = None  # default: <data_dir>/audit-archive
    archive_batch: int = Field(default=10_000, ge=1, le=1_000_000)
    sink: str | None = None
    sink_token: SecretStr | None = None
    sink_queue: int = Field(default=10_000, ge=1, le=1_000_000)
    sink_batch: int = Field(default=500, ge=1, le=10_000)
    sink_timeout: float = Field(default=2.0, gt=0, le=60)

    @field_validator("sink")
    @classmethod
    def _check_sink(cls, value: str | None) -> str | None:
        if not value:
            return None
        scheme, _, rest = value.partition("://")
        if scheme not in ("syslog+udp", "syslog+tcp", "http", "https") or not rest:
            raise ValueError(
                "IDHUB_AUDIT__SINK must be syslog+udp://host:port, syslog+tcp://host:port or an http(s) URL"
            )
        return value


class ArchiveSettings(BaseModel):
    """How long archived records of deleted users are kept (days) before ``idhub archive purge`` removes them.

    A tenant may set its own period in its settings (``archive_retention_days``).
    """

    retention_days: int = Field(default=365, ge=1, le=36500)


class Settings(BaseSettings):
    """All settings of one idhub process. Build with ``Settings()``; nothing reads them at import time."""

    model_config = SettingsConfigDict(env_prefix="IDHUB_", env_nested_delimiter="__", extra="ignore")

    environment: Literal["development", "test", "production"] = "development"
    data_dir: Path = Field(default_factory=find_data_dir)
    database_url: str = ""
    public_url: str = "http://127.0.0.1:8000"
    master_key: SecretStr | None = None
    # A file holding the master key (a container secret such as /run/secrets/idhub_master_key).
    master_key_file: Path | None = None
    redis_url: str | None = None
    # The tenant whose tokens with scope ``idhub:system`` administer every tenant (admin API).
    system_tenant: str = "system"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # text (for people) or json (one object per line, for log shippers); applies to uvicorn's lines too.
    log_format: Literal["text", "json"] = "text"
    # One line per request on the idhub.access logger (the query string left out: it carries codes).
    access_log: bool = False
    auto_migrate: bool | None = None
    # Proxies whose X-Forwarded-For and X-Request-ID are believed: addresses or networks, comma-separated.
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # A second port (same host as serve's) answering /metrics, /healthz and /readyz; the public port then
    # no longer answers /metrics. Unset: everything on the public port.
    management_port: int | None = Field(default=None, ge=1, le=65535)
    revocation_poll_seconds: float = Field(default=1.0, gt=0)
    client_cache_ttl: float = Field(default=5.0, ge=0)
    # Seconds between purges of expired revocation, single-use and interaction rows (0: never).
    purge_interval_seconds: float = Field(default=300.0, ge=0)
    # Faults are answers, not hangs (README "Faults"): every wait on the database or Redis is bounded
    # (seconds). The command timeout is also PostgreSQL's statement_timeout and SQLite's busy timeout.
    database_connect_timeout: float = Field(default=3.0, gt=0, le=60)
    database_command_timeout: float = Field(default=10.0, gt=0, le=3600)
    database_pool_timeout: float = Field(default=3.0, gt=0, le=60)
    # Connections each process keeps open to PostgreSQL; as many again are opened in bursts.
    database_pool_size: int = Field(default=10, ge=1, le=500)
    redis_timeout: float = Field(default=0.5, gt=0, le=30)
    # How long cached clients, tenants and signing keys are still served after their reload failed.
    stale_if_error_seconds: float = Field(default=60.0, ge=0, le=3600)

    tokens: TokenSettings = Field(default_factory=TokenSettings)
    sessions: SessionSettings = Field(default_factory=SessionSettings)
    throttle: ThrottleSettings = Field(default_factory=ThrottleSettings)
    passwords: PasswordSettings = Field(default_factory=PasswordSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    archive: ArchiveSettings = Field(default_factory=ArchiveSettings)

    # IDHUB_LOG_LEVEL=debug and IDHUB_LOG_FORMAT=JSON are both fine. Two validators rather than one that
    # asks ValidationInfo.field_name, which some pydantic 2.12 releases leave unset for defaults.
    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxies(cls, value: object) -> object:
        # "10.0.0.5, 172.18.0.0/16" (or a JSON list); each entry must be an address or a network.
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else [part for part in text.split(",") if part.strip()]
        if isinstance(value, list):
            for entry in value:
                try:
                    ipaddress.ip_network(str(entry).strip(), strict=False)
                except ValueError:
                    raise ValueError(f"{str(entry).strip()!r} is not an IP address or network") from None
            return [str(entry).strip() for entry in value]
        return value

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        value = value.rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("IDHUB_PUBLIC_URL must be an http(s) URL")
        return value

    @model_validator(mode="after")
    def _defaults_and_checks(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{self.data_dir / 'idhub.db'}"
        if not self.database_url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
            raise ValueError(
                "IDHUB_DATABASE_URL must be postgresql+asyncpg://USER@HOST:PORT/DB or sqlite+aiosqlite:///PATH"
            )
        if self.redis_url:
            if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
                raise ValueError("IDHUB_REDIS_URL must be redis://HOST:PORT/DB, rediss://... or unix://PATH")
            _require_driver("redis", "IDHUB_REDIS_URL", "redis")
        if self.database_url.startswith("postgresql+asyncpg://"):
            _require_driver("asyncpg", "IDHUB_DATABASE_URL", "postgres")
        if self.master_key_file is not None:
            if self.master_key is not None:
                raise ValueError("give IDHUB_MASTER_KEY or IDHUB_MASTER_KEY_FILE, not both")
            try:
                self.master_key = SecretStr(self.master_key_file.read_text().strip())
            except OSError as exc:
                raise ValueError(f"IDHUB_MASTER_KEY_FILE cannot be read ({exc.strerror or exc})") from None
        if self.master_key is not None:
            decode_master_key(self.master_key.get_secret_value())
        if self.environment == "production":
            if self.master_key is None:
                raise ValueError(
                    "IDHUB_MASTER_KEY (or IDHUB_MASTER_KEY_FILE) is required in production: generate one with"
                    " python -c 'import base64,secrets;"
                    "print(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())'"
                    " and keep it safe (IDHUB_ENVIRONMENT=development generates one into the data folder)"
                )
            if not self.public_url.startswith("https://"):
                raise ValueError("IDHUB_PUBLIC_URL must be https in production")
        return self

    @property
    def data_dir_chosen(self) -> bool:
        """Tell whether the data folder was named (``IDHUB_DATA_DIR``) rather than looked for."""
        return "data_dir" in self.model_fields_set

    @property
    def data_dir_needed(self) -> bool:
        """Tell whether the data folder holds state: the default SQLite database or the generated master key."""
        return self.database_url == f"sqlite+aiosqlite:///{self.data_dir / 'idhub.db'}" or self.master_key is None

    @property
    def is_sqlite(self) -> bool:
        """Tell whether the database is SQLite."""
        return self.database_url.startswith("sqlite")

    @property
    def secure_cookies(self) -> bool:
        """Mark cookies Secure when served over https."""
        return self.public_url.startswith("https://")

    @property
    def master_key_would_be_generated(self) -> bool:
        """Tell whether :meth:`master_key_bytes` would make a new key (none given, none in the data folder)."""
        return self.master_key is None and not (self.data_dir / "master.key").exists()

    def master_key_bytes(self) -> bytes:
        """Return the 32-byte master key, generating one into the data folder in development."""
        if self.master_key is not None:
            return decode_master_key(self.master_key.get_secret_value())
        path = self.data_dir / "master.key"
        if path.exists():
            return decode_master_key(path.read_text().strip())
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # secrets live here: owner only
        encoded = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(encoded + "\n")
        log.warning("IDHUB_MASTER_KEY is not set: generated one into %s; back it up", path)
        return decode_master_key(encoded)


def _require_driver(module: str, setting: str, extra: str) -> None:
    """Refuse a setting whose client library is not installed, in one line naming the fix."""
    try:
        __import__(module)
    except ImportError:
        raise ValueError(
            f"{setting} needs the {module} package, which is not installed: pip install 'idhub[{extra}]'"
        ) from None


def decode_master_key(value: str) -> bytes:
    """Decode and check a urlsafe-base64 master key of exactly 32 bytes."""
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("IDHUB_MASTER_KEY must be urlsafe base64") from exc
    if len(raw) != 32:
        raise ValueError("IDHUB_MASTER_KEY must encode exactly 32 random bytes")
    if len(set(raw)) < 16:
        raise ValueError("IDHUB_MASTER_KEY is too weak (not random)")
    return raw


# Environment variables with the IDHUB_ prefix that are not settings: the test suite's and the benchmarks'.
NOT_SETTINGS_PREFIXES = ("IDHUB_TEST_", "IDHUB_BENCH_", "IDHUB_FUZZ_")


def setting_names() -> list[str]:
    """Return every environment variable a setting is read from (``IDHUB_X``, ``IDHUB_GROUP__X``)."""
    names = []
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names += [f"IDHUB_{name}__{sub}".upper() for sub in annotation.model_fields]
        else:
            names.append(f"IDHUB_{name}".upper())
    return names


def unknown_settings(environ: dict[str, str] | os._Environ[str]) -> list[tuple[str, str | None]]:
    """Return the ``IDHUB_*`` variables no setting reads, each with the closest valid name (or ``None``).

    A misspelt setting (``IDHUB_DATABSE_URL``) is otherwise silently ignored and the default used.
    """
    import difflib

    known = setting_names()
    found = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith("IDHUB_") or upper in known or upper.startswith(NOT_SETTINGS_PREFIXES):
            continue
        close = difflib.get_close_matches(upper, known, n=1, cutoff=0.75)
        found.append((name, close[0] if close else None))
    return found


def unknown_setting_warnings(environ: dict[str, str] | os._Environ[str] | None = None) -> list[str]:
    """Return one warning line per unknown ``IDHUB_*`` variable (the CLI prints them, the app logs them)."""
    lines = []
    for name, close in unknown_settings(os.environ if environ is None else environ):
        hint = f"; did you mean {close}?" if close else ""
        lines.append(f"warning: {name} is not an idhub setting and is ignored{hint}")
    return lines
