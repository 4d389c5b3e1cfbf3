"""The gateway: a REST API over the bus (and, next, a web page)."""
