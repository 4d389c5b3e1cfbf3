"""`python -m services.quota`: run the quota manager alone (see `bus up` for all in one)."""

from services.cli import run_services
from services.quota.service import QuotaManager

if __name__ == "__main__":
    run_services("quota", lambda _env: QuotaManager())
