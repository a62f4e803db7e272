"""The service's configuration, from environment variables prefixed ``MEI_SERVICE_``.

Every process (scheduler, workers, Flower, the notebook client) reads the same variables; a setting's
variable is its field name in upper case after the prefix (``broker_url`` is ``MEI_SERVICE_BROKER_URL``).
``docs/configuration.md`` lists them with their meaning.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from kombu.utils.url import maybe_sanitize_url

PREFIX = "MEI_SERVICE_"
# The text of .env.example's placeholder secrets; a process that finds it in a secret refuses to start.
PLACEHOLDER = "change-me"
SECRET_VARIABLES = (
    "DJ_PASS",
    "DJ_STORES",
    PREFIX + "BROKER_URL",
    PREFIX + "RESULT_BACKEND",
    PREFIX + "FLOWER_BASIC_AUTH",
)
# Variables that were renamed, and what to set instead.
RENAMED = {PREFIX + "ALLOWED_MODULES": "MEI_ALLOWED_MODULES (read by the framework too: docs/configuration.md)"}


class SettingsError(ValueError):
    """A setting is missing, malformed, or inconsistent with another."""


@dataclass(frozen=True, repr=False)
class Settings:
    broker_url: str = "redis://127.0.0.1:6379/0"
    result_backend: str = "redis://127.0.0.1:6379/1"
    # Dotted paths of the MEI tables that `mei-service init` declares and `mei-service scheduler` keeps topped up.
    tables: tuple[str, ...] = ()
    default_queue: str = "mei"
    default_priority: int = 5
    batch_size: int = 16
    max_batch_size: int = 4096
    # Seconds before Redis hands an unacknowledged message to another worker; every limit below fits inside.
    visibility_timeout: int = 7200
    task_time_limit: int = 0  # 0: derived from the visibility timeout
    retry_backoff_max: int = 300
    max_retries: int = 5
    result_expires: int = 7 * 24 * 3600
    heartbeat_interval: float = 5.0
    heartbeat_ttl: float = 30.0
    # Seconds a queued key may go unclaimed while its message is not waiting on the broker.
    claim_timeout: float = 20.0
    soft_shutdown_timeout: float = 30.0
    progress_interval: float = 2.0
    flower_basic_auth: str = field(default="", repr=False)
    flower_port: int = 5555

    @property
    def gpu_queue(self) -> str:
        """The queue of the tasks whose method generates on CUDA: only workers with a GPU consume it."""
        return f"{self.default_queue}-cuda"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        for old, new in RENAMED.items():
            if old in environ:
                raise SettingsError(f"{old} is no longer read: set {new}")
        placeholders = [name for name in SECRET_VARIABLES if PLACEHOLDER in environ.get(name, "")]
        if placeholders:
            raise SettingsError(
                f"{', '.join(placeholders)} still hold the placeholder '{PLACEHOLDER}' of .env.example: "
                "set real secrets (for example `python -c 'import secrets; print(secrets.token_urlsafe(24))'`)"
            )
        values = {}
        for setting in fields(cls):
            raw = environ.get(PREFIX + setting.name.upper())
            if raw is not None:
                values[setting.name] = _parse(setting, raw)
        settings = cls(**values)
        settings.check()
        return settings

    @property
    def hard_time_limit(self) -> int:
        """Seconds a task may run before its worker process is killed."""
        return self.task_time_limit or int(0.8 * (self.visibility_timeout - self.retry_backoff_max))

    @property
    def soft_time_limit(self) -> int:
        """Seconds after which a task is told to stop (the current key fails, the others return to the queue)."""
        return max(1, int(0.9 * self.hard_time_limit))

    def check(self) -> None:
        """Raises ``SettingsError`` when a task could outlive the broker's visibility timeout."""
        longest = self.hard_time_limit + self.retry_backoff_max + self.soft_shutdown_timeout
        if longest >= self.visibility_timeout:
            raise SettingsError(
                f"a task may run {self.hard_time_limit} s and wait {self.retry_backoff_max} s before a retry "
                f"(and {self.soft_shutdown_timeout} s at shutdown), longer than MEI_SERVICE_VISIBILITY_TIMEOUT="
                f"{self.visibility_timeout} s after which Redis would deliver it again; raise the visibility "
                "timeout or lower MEI_SERVICE_TASK_TIME_LIMIT / MEI_SERVICE_RETRY_BACKOFF_MAX"
            )
        if not 0 <= self.default_priority <= 9:
            raise SettingsError(
                f"MEI_SERVICE_DEFAULT_PRIORITY must be 0 (most urgent) to 9, got {self.default_priority}"
            )
        if not 1 <= self.batch_size <= self.max_batch_size:
            raise SettingsError(
                f"MEI_SERVICE_BATCH_SIZE must be 1 to MEI_SERVICE_MAX_BATCH_SIZE={self.max_batch_size}, "
                f"got {self.batch_size}"
            )
        if self.flower_basic_auth:
            flower_credentials(self.flower_basic_auth)

    def check_batch_size(self, batch_size: int) -> int:
        """``batch_size`` if it is 1 to ``max_batch_size``, else ``SettingsError`` saying what is allowed."""
        is_int = isinstance(batch_size, int) and not isinstance(batch_size, bool)
        if not (is_int and 1 <= batch_size <= self.max_batch_size):
            raise SettingsError(
                f"a batch size must be an integer from 1 to {self.max_batch_size} keys per task, got {batch_size!r}; "
                "MEI_SERVICE_MAX_BATCH_SIZE raises the limit"
            )
        return batch_size

    def __repr__(self) -> str:
        shown = {
            setting.name: redacted(value) if isinstance(value, str) else value
            for setting in fields(self)
            if setting.repr
            for value in [getattr(self, setting.name)]
        }
        return f"Settings({', '.join(f'{name}={value!r}' for name, value in shown.items())})"

    def replace(self, **changes: object) -> Settings:
        settings = dataclasses.replace(self, **changes)
        settings.check()
        return settings


def redacted(url: str) -> str:
    """``url`` with any password in it masked."""
    return maybe_sanitize_url(url, mask="********")


def flower_credentials(value: str) -> list[str]:
    """The ``user:password`` pairs of ``MEI_SERVICE_FLOWER_BASIC_AUTH`` (comma-separated), each checked.

    Flower splits the value at commas and compares each part with the whole decoded header, so an empty part
    or one without a password would let in a request that sends just that.
    """
    pairs = value.split(",")
    for pair in pairs:
        user, colon, password = pair.partition(":")
        if not (user and colon and password) or pair != pair.strip():
            raise SettingsError(
                "MEI_SERVICE_FLOWER_BASIC_AUTH must be 'user:password' (several joined by commas), each with a "
                "user name and a password, no spaces around them and no comma inside a password"
            )
    return pairs


def _parse(setting: dataclasses.Field, raw: str) -> object:
    name = PREFIX + setting.name.upper()
    kind = type(setting.default)
    try:
        if kind is tuple:
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        if kind is bool:
            return raw.strip().lower() in ("1", "true", "yes", "on")
        return kind(raw)
    except ValueError as error:
        raise SettingsError(f"{name}={raw!r} is not a valid {kind.__name__}") from error
