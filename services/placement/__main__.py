"""`python -m services.placement`: run the placement service alone (see `bus up`).

With IDLECLOUD_REPLICA_TOKENS=1 (a site with keys and the auth service) every replica
gets a broker token of its own.
"""

from services.cli import run_services
from services.placement.service import Placement, PlacementSettings

if __name__ == "__main__":
    run_services(
        "placement", lambda env: Placement(PlacementSettings(replica_tokens=env.replica_tokens))
    )
