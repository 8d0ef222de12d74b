"""`python -m dispatcher` runs the same entry point as the console script."""

from dispatcher.wiring.entry import main

raise SystemExit(main())
