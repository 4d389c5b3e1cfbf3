"""`python -m services.metrics`: run the metrics writer and the usage server (see
`bus up --influx-db`).

InfluxDB from the environment: IDLECLOUD_INFLUX_URL (http://127.0.0.1:8086),
IDLECLOUD_INFLUX_DB (idlecloud, created if missing over v1; the bucket over v2) and
IDLECLOUD_INFLUX_API (v1, or v2 with IDLECLOUD_INFLUX_TOKEN and IDLECLOUD_INFLUX_ORG).
Several writers may share the work.
"""

from services.cli import run_services
from services.metrics.influx import influx_sink
from services.metrics.usage_server import UsageServer, usage_query
from services.metrics.writer import MetricsWriter

if __name__ == "__main__":
    run_services(
        "metrics",
        lambda env: MetricsWriter(influx_sink(env.influx_api, env.influx_url, env.influx_db,
                                              token=env.influx_token, org=env.influx_org)),
        lambda env: UsageServer(usage_query(env.influx_api, env.influx_url, env.influx_db,
                                            env.influx_token)),
    )  # fmt: skip
