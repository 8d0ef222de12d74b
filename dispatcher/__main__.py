"""`python -m dispatcher` runs the same entry point as the console script."""

from dispatcher.wiring.cli import main

raise SystemExit(main())
