"""`python -m services.placement`: run the placement service alone (see `bus up`)."""

from services.cli import run_services
from services.placement.service import Placement

if __name__ == "__main__":
    run_services("placement", Placement)
