"""Settings: a TOML file plus ``PROVISIOND_*`` environment variables.

Only :func:`load_settings` decides where settings come from (``--config``, the
``PROVISIOND_CONFIG`` variable, or ``/etc/provisiond/provisiond.toml`` when it
exists). Environment variables win over the file. Nested keys use ``__`` in the
environment, e.g. ``PROVISIOND_TIMEOUTS__DEPLOYING=900``.

Example ``provisiond.toml``::

    data_dir = "/var/lib/provisiond"
    database_url = "postgresql+psycopg://provisiond@127.0.0.1/provisiond"
    listen_port = 8080

    [timeouts]
    deploying = 900
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from provisiond.errors import ConfigError
from provisiond.networks import ProvisioningNetwork

SECONDS = 1.0
MINUTES = 60 * SECONDS

SYSTEM_CONFIG = Path("/etc/provisiond/provisiond.toml")


class StateTimeouts(BaseModel):
    """Seconds a machine may stay in each transitional state before the reaper fails it."""

    model_config = {"extra": "forbid"}

    allocated: float = Field(default=5 * MINUTES, gt=0)
    inspecting: float = Field(default=15 * MINUTES, gt=0)
    deploying: float = Field(default=15 * MINUTES, gt=0)
    installing_agent: float = Field(default=10 * MINUTES, gt=0)
    releasing: float = Field(default=15 * MINUTES, gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PROVISIOND_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    data_dir: Path = Field(default=Path(".provisiond"))
    database_url: str = ""
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=8080, ge=1, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_file: Path | None = None
    sqlite_busy_timeout_s: float = Field(default=30 * SECONDS, gt=0)
    lock_ttl_s: float = Field(default=5 * MINUTES, gt=0)
    reaper_interval_s: float = Field(default=10 * SECONDS, gt=0)
    power_sync_interval_s: float = Field(default=60 * SECONDS, gt=0)
    #: How often dnsmasq's host files are re-rendered from the DB (repairs a file a
    #: failed write or another daemon's change left stale).
    hosts_resync_interval_s: float = Field(default=5 * MINUTES, gt=0)
    power_sync_concurrency: int = Field(default=64, ge=1, le=1024)
    power_call_timeout_s: float = Field(default=10 * SECONDS, gt=0)
    #: Bound of one SNMP request to a PDU (each try); a timeout is retried once.
    pdu_call_timeout_s: float = Field(default=3 * SECONDS, gt=0, le=60)
    #: Consecutive failed power reads before a BMC is marked unreachable.
    power_failure_threshold: int = Field(default=3, ge=1)
    discovery_probe_timeout_s: float = Field(default=1.0, gt=0, le=30)
    #: The most address x port pairs one sweep may probe.
    discovery_max_targets: int = Field(default=65536, ge=1)
    #: BMCs one discovery sweep logs in to at once, on threads of the sweep's own: a
    #: sweep never holds the executor's threads (executor_workers) that power sync and
    #: power actions need.
    discovery_login_concurrency: int = Field(default=64, ge=1, le=1024)
    #: Threads for blocking libraries (pyghmi, paramiko).
    executor_workers: int = Field(default=64, ge=1, le=1024)
    timeouts: StateTimeouts = Field(default_factory=StateTimeouts)
    #: What a failed cabling check (LLDP against the planned switch port of the PXE NIC)
    #: does to an inspected machine: "warn" records it; "hold" also keeps the machine out
    #: of allocation (Machine.hold_reason) until a later check passes.
    cabling_policy: Literal["warn", "hold"] = "warn"
    #: How long a console sign-in lasts (the session cookie's expiry), in seconds.
    console_session_ttl_s: int = Field(default=8 * 3600, ge=60, le=30 * 86400)
    #: Origins the console's forms may come from besides the Host they were sent to,
    #: e.g. ["https://provisiond.example.com"] behind a proxy that rewrites Host (only
    #: consulted for browsers that do not send Sec-Fetch-Site).
    console_origins: list[str] = Field(default_factory=list, max_length=32)
    #: A deploy fails when the agent has not heartbeated this long after its install.
    agent_heartbeat_timeout_s: float = Field(default=120 * SECONDS, gt=0)
    #: How often an installed agent heartbeats.
    agent_heartbeat_interval_s: float = Field(default=15 * SECONDS, gt=0)
    #: SSH connection attempts (jittered backoff) before an agent install fails.
    ssh_connect_attempts: int = Field(default=10, ge=1, le=100)
    #: Times a deploy interrupted in a step that cannot resume is retried from power-cycle.
    deploy_max_attempts: int = Field(default=3, ge=1, le=10)
    #: Several daemons on one PostgreSQL (provisiond.cluster): a daemon whose heartbeat
    #: (every daemon_heartbeat_s, at database time) is older than daemon_dead_after_s is
    #: declared dead by the others, which take its machines at once.
    daemon_heartbeat_s: float = Field(default=5 * SECONDS, gt=0, le=60)
    daemon_dead_after_s: float = Field(default=30 * SECONDS, ge=3, le=3600)
    #: Roles one daemon holds (the reaper, the allocation queue, a network's DHCP) pass
    #: to another this long after their holder last renewed them.
    leader_ttl_s: float = Field(default=15 * SECONDS, ge=1, le=3600)
    #: A drain (SIGUSR2, or `provisiond daemons drain`) waits this long for running
    #: steps before the daemon stops anyway (the steps are then redone elsewhere).
    drain_timeout_s: float = Field(default=60 * SECONDS, gt=0, le=3600)
    #: The deploy engine's idle poll; it is also woken at once by API calls and callbacks.
    engine_interval_s: float = Field(default=1 * SECONDS, gt=0)
    #: A boot power-cycled before a daemon restart that neither calls back nor is heard
    #: from (a new boot phase, or its PXE firmware asking dnsmasq again) this long
    #: after the restart is taken as lost and power-cycled again. Longer than the
    #: guest's phone-home retries (about a minute), so a callback sent into the
    #: downtime's last seconds still lands.
    lost_boot_s: float = Field(default=90 * SECONDS, gt=0)
    #: Boot, dnsmasq and OS templates (most-specific file first); the shipped pxe/ by default.
    templates_dir: Path = Field(default_factory=lambda: _default_templates())
    #: Kernels, initrds and rootfs images; ``<data_dir>/images`` when unset.
    images_dir: Path | None = None
    #: The base URL machines use to reach the boot routes; the request's own base when unset.
    public_url: str = ""
    #: Enroll unknown MACs that PXE-boot, and boot them into inspection.
    auto_enroll: bool = True
    #: Per provisioning network: machines enrolled via PXE per minute, and PXE-enrolled
    #: machines not yet through an inspection; past either an unknown MAC is told to
    #: retry later (see provisiond.deploy.enrollment). 0 enrolls none.
    enroll_max_per_minute: int = Field(default=30, ge=0, le=100_000)
    enroll_max_pending: int = Field(default=200, ge=0, le=1_000_000)
    #: The image that unknown or inspecting machines boot.
    inspect_image: str = "inspect"
    #: Requests in flight per class before new ones get 503 + Retry-After (see
    #: provisiond.api.admission): ordinary API calls, long-polls and streams, the
    #: machines' boot routes, image downloads.
    api_max_in_flight: int = Field(default=64, ge=1, le=4096)
    watch_max_in_flight: int = Field(default=256, ge=1, le=16384)
    boot_max_in_flight: int = Field(default=256, ge=1, le=16384)
    files_max_in_flight: int = Field(default=1024, ge=1, le=16384)
    #: Provisioning networks, each with a supervised dnsmasq (see provisiond.netboot.dnsmasq_conf).
    networks: list[ProvisioningNetwork] = Field(default_factory=list)

    @field_validator("database_url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if value and not value.startswith(("sqlite", "postgresql")):
            raise ValueError("expected a sqlite:/// or postgresql+psycopg:// URL")
        return value

    @model_validator(mode="after")
    def _cluster_timings(self) -> Settings:
        beat, dead, ttl = self.daemon_heartbeat_s, self.daemon_dead_after_s, self.leader_ttl_s
        if dead < 3 * beat:
            raise ValueError(
                f"daemon_dead_after_s ({dead:g}) must be at least 3 x daemon_heartbeat_s "
                f"({beat:g}), or a daemon that misses one heartbeat is declared dead"
            )
        if not 2 * beat <= ttl <= dead:
            raise ValueError(
                f"leader_ttl_s ({ttl:g}) must be from 2 x daemon_heartbeat_s ({2 * beat:g}) "
                f"to daemon_dead_after_s ({dead:g}): a role is renewed every heartbeat"
            )
        return self

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir.resolve() / 'provisiond.db'}"

    @property
    def images_path(self) -> Path:
        """Where boot images live: ``images_dir``, else ``<data_dir>/images``."""
        return Path(self.images_dir or self.data_dir / "images")

    def boot_base_url(self, request_base: str) -> str:
        """The base URL machines use to reach the boot routes: ``public_url``, else the
        request's own base."""
        return self.public_url.rstrip("/") or request_base.rstrip("/")

    @property
    def key_file(self) -> Path:
        return self.data_dir / "secret.key"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if _CURRENT_TOML is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=_CURRENT_TOML))
        return tuple(sources)


_CURRENT_TOML: Path | None = None


def _default_templates() -> Path:
    from provisiond.templates import DEFAULT_DIR

    return DEFAULT_DIR


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(file)"
    value = error.get("input")
    shown = "" if isinstance(value, dict) else f" = {value!r}"
    return f"{key}{shown}: {error['msg']}"


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings, or raise ConfigError naming the key, the value and what was expected."""
    global _CURRENT_TOML
    path = config_file
    if path is None and os.environ.get("PROVISIOND_CONFIG"):
        path = Path(os.environ["PROVISIOND_CONFIG"])
    if path is None and SYSTEM_CONFIG.is_file():
        path = SYSTEM_CONFIG
    if path is not None and not path.is_file():
        raise ConfigError(
            f"config file {path} does not exist",
            hint="pass --config with an existing TOML file, or omit it to use defaults",
        )
    _CURRENT_TOML = path
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(_describe(dict(e)) for e in exc.errors())
        source = f" in {path}" if path else ""
        raise ConfigError(
            f"invalid configuration{source}: {problems}",
            hint="fix the key in the TOML file or the PROVISIOND_* variable named above",
        ) from None
    except ValueError as exc:  # TOML syntax errors
        raise ConfigError(f"cannot read {path}: {exc}", hint="check the TOML syntax") from None
    finally:
        _CURRENT_TOML = None
