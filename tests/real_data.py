"""Where the suite finds real data that lives outside the repository.

This is a plain module rather than part of ``tests/conftest.py``: pytest imports every
conftest under the one module name ``conftest``, so ``from conftest import ...`` in a test file
gets whichever conftest was loaded last (``tests/jetsearch/latency/conftest.py`` in a full run).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CAMVID_ENV = "JETSEARCH_CAMVID"


def camvid_root() -> Path:
    """The CamVid copy for the real-data tests: ``$JETSEARCH_CAMVID`` when it is set and not
    empty, else ``<repository>/../shared/camvid``. Tests skip when it is not a directory."""
    value = os.environ.get(CAMVID_ENV, "").strip()
    return Path(value).expanduser() if value else REPO_ROOT.parent / "shared" / "camvid"
