"""`python -m services.auth`: run the auth service alone (see `bus up` for all in one).

Its settings come from the environment: IDLECLOUD_AUTH_KEY_FILE (the signing key, see
`bus token init`), IDLECLOUD_AUTH_HOST (127.0.0.1) and IDLECLOUD_AUTH_PORT (8470),
IDLECLOUD_VHOST ("/") and IDLECLOUD_MANAGEMENT_URL.
"""

import sys

from services.auth.service import AuthService, AuthSettings, settings_from_env
from services.cli import run_services

if __name__ == "__main__":
    settings: AuthSettings | None = None
    if "--help" not in sys.argv and "-h" not in sys.argv:
        try:
            settings = settings_from_env()
        except ValueError as error:
            sys.exit(f"python -m services.auth: {error}")
    run_services("auth", lambda: AuthService(settings or settings_from_env()))
