"""``python -m unite_integrations.cli``: the ``unite`` command without its console script."""

from . import main

raise SystemExit(main())
