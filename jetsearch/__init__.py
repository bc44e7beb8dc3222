"""jetsearch: hardware-aware architecture search for JetSeg networks.

The search (spaces, studies, latency providers, reports) lives in the submodules and the
``jetsearch`` command line; the network itself is the :mod:`jetseg` package.
"""

from __future__ import annotations

# One distribution ships both packages, so they share its version.
from jetseg import __version__

__all__ = ["__version__"]
