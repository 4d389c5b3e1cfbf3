"""The worker SDK: turn functions into stateless services and submit work to them."""

from bus.sdk.app import App, Executor, Task
from bus.sdk.checkpoints import CheckpointError, TaskContext
from bus.sdk.client import TaskClient, TaskFailed, connect_app
from bus.sdk.jobs import Job, JobError, JobExpired, JobRefused
from bus.sdk.sync import SyncClient, SyncResult
from bus.sdk.worker import Worker

__all__ = [
    "App",
    "CheckpointError",
    "Executor",
    "Job",
    "JobError",
    "JobExpired",
    "JobRefused",
    "SyncClient",
    "SyncResult",
    "Task",
    "TaskClient",
    "TaskContext",
    "TaskFailed",
    "Worker",
    "connect_app",
]
