"""`python -m bus` is the `bus` command."""

from bus.cli import main

main()
