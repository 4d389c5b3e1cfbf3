"""The metrics writer: samples and lifecycle events into InfluxDB."""
