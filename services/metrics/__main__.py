"""`python -m services.metrics`: run the metrics writer alone (see `bus up --influx-db`).

InfluxDB 1.x from the environment: IDLECLOUD_INFLUX_URL (http://127.0.0.1:8086) and
IDLECLOUD_INFLUX_DB (idlecloud, created if missing). Several writers may share the work.
"""

from services.cli import run_services
from services.metrics.influx import InfluxV1
from services.metrics.writer import MetricsWriter

if __name__ == "__main__":
    run_services("metrics", lambda env: MetricsWriter(InfluxV1(env.influx_url, env.influx_db)))
