"""``python -m swarmbinder``: the same as the ``swarmbinder`` command."""

from .cli import main

raise SystemExit(main())
