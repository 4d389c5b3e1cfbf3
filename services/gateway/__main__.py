"""`python -m services.gateway`: run the REST API alone (see `bus up --gateway-port`).

Its settings come from the environment: IDLECLOUD_AUTH_PUBLIC_KEY (the auth service's
public key, `<kid>.pub.pem`; required), IDLECLOUD_GATEWAY_HOST (127.0.0.1),
IDLECLOUD_GATEWAY_PORT (8480), IDLECLOUD_AUTH_URL (where it trades its callers' keys for
their broker tokens), and IDLECLOUD_TLS_CERT / IDLECLOUD_TLS_KEY for HTTPS.
"""

from services.cli import run_services
from services.gateway.service import Gateway, GatewaySettings
from services.settings import ServiceEnv


def gateway(env: ServiceEnv) -> Gateway:
    """The gateway as the environment configures it.

    Raises:
        ValueError: no public key was named.
    """
    if env.auth_public_key is None:
        raise ValueError(
            "set IDLECLOUD_AUTH_PUBLIC_KEY to the auth service's public key (.pub.pem)"
        )
    settings = GatewaySettings(
        env.auth_public_key,
        http_host=env.gateway_host,
        http_port=env.gateway_port,
        tls=env.tls(),
        auth_url=env.auth_url,
    )
    return Gateway(settings)


if __name__ == "__main__":
    run_services("gateway", gateway)
