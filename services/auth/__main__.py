"""`python -m services.auth`: run the auth service alone (see `bus up` for all in one).

Its settings come from the environment: IDLECLOUD_AUTH_KEY_FILE (the signing key, see
`bus token init`; required), IDLECLOUD_AUTH_HOST (127.0.0.1) and IDLECLOUD_AUTH_PORT
(8470), IDLECLOUD_VHOST ("/"), IDLECLOUD_BROKER_CTL ("rabbitmqctl"), and IDLECLOUD_TLS_CERT
/ IDLECLOUD_TLS_KEY for HTTPS.
"""

from services.auth.service import AuthService, settings_from
from services.cli import run_services

if __name__ == "__main__":
    run_services("auth", lambda env: AuthService(settings_from(env)))
