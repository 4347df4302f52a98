"""`python -m mrw.cli`: the same command line as `mrw`."""

from mrw.cli import main

main()
