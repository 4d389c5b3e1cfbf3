"""The control-plane services' settings, from the environment: one typed list, checked.

Every setting is a variable ``IDLECLOUD_<NAME>`` (the README lists them). A value that
does not fit is refused with the variable's name, the value and the rule, and
``python -m services.<name>`` exits 2 with that sentence instead of a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bus.defaults import (
    AUTH_PORT,
    AUTH_URL,
    BROKER_URL,
    GATEWAY_PORT,
    HOST,
    INFLUX_API,
    INFLUX_DB,
    INFLUX_ORG,
    INFLUX_TOKEN,
    INFLUX_URL,
)
from bus.tls import TlsFiles, server_files

__all__ = ["ServiceEnv", "service_env"]

Port = Annotated[int, Field(ge=1, le=65_535)]


class ServiceEnv(BaseSettings):
    """Every ``IDLECLOUD_*`` variable a control-plane service reads."""

    model_config = SettingsConfigDict(env_prefix="IDLECLOUD_", extra="ignore", frozen=True)

    #: The broker (``--url`` overrides it).
    url: str = BROKER_URL
    #: The platform's virtual host, for the broker tokens the auth service mints.
    vhost: str = "/"
    #: The auth service's signing key (``bus token init``).
    auth_key_file: Path | None = None
    auth_host: str = HOST
    auth_port: Port = AUTH_PORT
    #: Where the gateway trades its callers' API keys for their broker tokens.
    auth_url: str = AUTH_URL
    #: How the auth service runs rabbitmqctl to change the broker's trusted keys
    #: (whitespace-separated, e.g. ``rabbitmqctl -n rabbit@broker``).
    broker_ctl: str = "rabbitmqctl"
    #: The certificate and key (PEM) the auth service and the gateway serve HTTPS with
    #: (``bus tls init``); unset, they serve plain HTTP, which only loopback should.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: The auth service's public key (``<kid>.pub.pem``), for the gateway.
    auth_public_key: Path | None = None
    gateway_host: str = HOST
    gateway_port: Port = GATEWAY_PORT
    influx_url: str = INFLUX_URL
    influx_db: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")] = (
        INFLUX_DB
    )
    #: ``v1`` (``/write``: every InfluxDB 1.x, Debian's 1.6.7 too) or ``v2``
    #: (influxdb-client: 1.8 and later, where the database is the bucket; 2.x, 3.x).
    influx_api: Literal["v1", "v2"] = INFLUX_API
    #: For ``v2``: the token (1.8: ``user:password``, or ``:`` without authentication)
    #: and the organisation (1.8: ``-``).
    influx_token: str = INFLUX_TOKEN
    influx_org: str = INFLUX_ORG
    #: How long an ended job's results are kept, and how many MiB of results each
    #: namespace may keep (a new job is refused past it).
    job_retention_s: Annotated[float, Field(ge=60, le=10 * 365 * 86_400)] = 7 * 86_400
    job_max_stored_mib: Annotated[int, Field(ge=1, le=1024**2)] = 1024
    #: How long an ended job's record stays in the history (``bus job history``).
    job_history_s: Annotated[float, Field(ge=60, le=20 * 365 * 86_400)] = 180 * 86_400
    #: Give every replica a broker token of its own (a site with keys).
    replica_tokens: bool = False
    #: The Kubernetes namespaces whose pods the bridge may evict, comma-separated.
    kube_namespaces: str = ""
    #: Map a PC to the Kubernetes node whose label of this name names it.
    kube_node_label: str | None = None

    @field_validator(
        "auth_key_file", "auth_public_key", "kube_node_label", "tls_cert", "tls_key", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """A variable set to nothing is not set (``Path("")`` would name this folder)."""
        return None if value == "" else value

    def tls(self) -> TlsFiles | None:
        """The HTTPS certificate and key, if set (the CA beside them, ``ca.pem``).

        Raises:
            ValueError: only one of the two is set.
        """
        return server_files(self.tls_cert, self.tls_key)


def service_env(program: str) -> ServiceEnv:
    """The settings from the environment; exit 2 with a sentence if one does not fit.

    Args:
        program: how the service was started, for the message (``python -m services.x``).
    """
    try:
        return ServiceEnv()
    except ValidationError as error:
        problems = [
            f"IDLECLOUD_{str(problem['loc'][0]).upper()}={problem.get('input')!r}: {problem['msg']}"
            for problem in error.errors()
        ]
        print(f"{program}: " + "; ".join(problems), file=sys.stderr)
        raise SystemExit(2) from None
