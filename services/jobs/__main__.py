"""`python -m services.jobs`: run the jobs service alone (see `bus up` for all in one)."""

from services.cli import run_services
from services.jobs.service import JobSettings, JobsService

if __name__ == "__main__":
    run_services("jobs", lambda env: JobsService(JobSettings(
        retention_s=env.job_retention_s, max_stored_bytes=env.job_max_stored_mib * 1024**2,
        history_s=env.job_history_s,
    )))  # fmt: skip
