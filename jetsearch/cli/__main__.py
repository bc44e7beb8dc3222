"""``python -m jetsearch.cli``: the ``jetsearch`` console script."""

from __future__ import annotations

import sys

from jetsearch.cli import main

sys.exit(main())
