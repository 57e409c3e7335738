"""`python -m pneumo.cli …`, the same as the `pneumo` command."""

from pneumo.cli import main

main()
