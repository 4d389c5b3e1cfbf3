"""Development services: the local broker, dockerd, InfluxDB and the images tests build.

:mod:`idlecloud.dev.services` brings up RabbitMQ (and the pieces every helper shares);
:mod:`idlecloud.dev.docker`, :mod:`idlecloud.dev.influx` and :mod:`idlecloud.dev.image`
bring up dockerd, InfluxDB and the demo's worker image. Tests, benchmarks and ``make demo``
start services through these, never production code.
"""
