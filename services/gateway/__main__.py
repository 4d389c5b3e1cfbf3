"""`python -m services.gateway`: run the REST API alone (see `bus up --gateway-port`).

Its settings come from the environment: IDLECLOUD_AUTH_PUBLIC_KEY (the auth service's
public key, `<kid>.pub.pem`) and IDLECLOUD_GATEWAY_PORT (8480).
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
    port = int(os.environ.get("IDLECLOUD_GATEWAY_PORT", "8480"))
    run_services("gateway", lambda: Gateway(GatewaySettings(Path(key), http_port=port)))
