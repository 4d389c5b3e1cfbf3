"""The quota manager: the only consumer of deploy, scale and delete requests."""
