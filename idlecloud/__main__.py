"""`python -m idlecloud` is the `bus` command."""

from idlecloud.cli import main

main()
