"""The SDK tests' app as a worker serves it: namespace and app id from the environment.

Serve it with `bus worker tests.programs.sdk_app:app` and IDLECLOUD_NAMESPACE/APP set.
"""

from tests.programs.sdk_tasks import make_app

app = make_app()
