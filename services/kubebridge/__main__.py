"""`python -m services.kubebridge`: mirror presence, cordons and drains to Kubernetes.

Its settings come from the environment: IDLECLOUD_KUBE_NAMESPACES (the namespaces whose
pods it may evict, comma-separated; required), IDLECLOUD_KUBE_NODE_LABEL (map a PC to the
node whose label of that name is the PC's name; default: the node named like the PC) and
KUBECONFIG (default: in-cluster credentials when run in a pod, else ~/.kube/config).
"""

from services.cli import run_services
from services.kubebridge.service import KubeBridge, settings_from

if __name__ == "__main__":
    run_services("kubebridge", lambda env: KubeBridge(settings_from(env)))
