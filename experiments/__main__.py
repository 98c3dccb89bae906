"""``python -m experiments`` = the ``longrec`` command."""

from experiments.cli import main

raise SystemExit(main())
