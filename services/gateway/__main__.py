"""`python -m services.gateway`: run the REST API alone (see `bus up --gateway-port`).

Its settings come from the environment: IDLECLOUD_AUTH_PUBLIC_KEY (the auth service's
public key, `<kid>.pub.pem`), IDLECLOUD_GATEWAY_HOST (127.0.0.1) and
IDLECLOUD_GATEWAY_PORT (8480).
"""

import os
import sys
from pathlib import Path

from services.cli import run_services
from services.gateway.service import Gateway, GatewaySettings

if __name__ == "__main__":
    key = os.environ.get("IDLECLOUD_AUTH_PUBLIC_KEY", "")
    if not key and "--help" not in sys.argv and "-h" not in sys.argv:
        sys.exit("set IDLECLOUD_AUTH_PUBLIC_KEY to the auth service's public key (.pub.pem)")
    host = os.environ.get("IDLECLOUD_GATEWAY_HOST", GatewaySettings.http_host)
    port = int(os.environ.get("IDLECLOUD_GATEWAY_PORT", "8480"))
    settings = GatewaySettings(Path(key), http_host=host, http_port=port)
    run_services("gateway", lambda: Gateway(settings))
