"""Every default address and name the parts share, in one place.

A single machine runs everything on loopback with these; a site overrides each with its
``IDLECLOUD_*`` variable (the README's table). The services' settings, the SDK, the
agent's and the ``bus`` command's options all take their defaults from here.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "AMQPS_PORT",
    "AMQP_PORT",
    "AUTH_PORT",
    "AUTH_URL",
    "BROKER_URL",
    "GATEWAY_PORT",
    "HOST",
    "INFLUX_API",
    "INFLUX_DB",
    "INFLUX_ORG",
    "INFLUX_TOKEN",
    "INFLUX_URL",
    "REPLICA_BROKER_URL",
    "RESOURCE_SERVER_ID",
]

#: Where a single machine's services listen: loopback only.
HOST = "127.0.0.1"
AMQP_PORT = 5672
#: The broker's TLS port (``amqps://``).
AMQPS_PORT = 5671
#: The broker a process connects to when nothing says otherwise (RabbitMQ's default user,
#: which RabbitMQ itself lets in from loopback only).
BROKER_URL = f"amqp://guest:guest@{HOST}:{AMQP_PORT}/%2F"
#: The broker a replica is given: no credentials (it connects with its own token).
REPLICA_BROKER_URL = f"amqp://{HOST}:{AMQP_PORT}/"
AUTH_PORT = 8470
#: Where API keys are traded for broker tokens.
AUTH_URL = f"http://{HOST}:{AUTH_PORT}"
GATEWAY_PORT = 8480
INFLUX_URL = f"http://{HOST}:8086"
INFLUX_DB = "idlecloud"
#: How the metrics writer speaks to InfluxDB: ``v1`` (its ``/write``, every 1.x) or ``v2``
#: (influxdb-client: InfluxDB 1.8 and later, 2.x, 3.x).
INFLUX_API: Final = "v1"
#: The v2 API's token and org as InfluxDB 1.8 takes them without authentication.
INFLUX_TOKEN = ":"
INFLUX_ORG = "-"
#: The audience of broker tokens and the prefix of their scopes.
RESOURCE_SERVER_ID = "idlecloud"
