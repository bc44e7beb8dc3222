"""The two data packages that live outside jetsearch/ in a checkout.

Everything else is in pyproject.toml. ``find_namespace_packages`` finds the code packages and
the data folders inside them (``jetseg/presets`` has no ``__init__.py``); the built-in spaces and
studies sit at the top of the repository (``space/``, ``studies/``) and are mapped into the wheel
as ``jetsearch.builtin.space`` and ``jetsearch.builtin.studies``, which no directory walk can
find, so they are named here.
"""

from setuptools import find_namespace_packages, setup

DATA_PACKAGES = ["jetsearch.builtin.space", "jetsearch.builtin.studies"]

setup(
    # Namespace packages too: a data folder such as jetseg/presets has no __init__.py.
    packages=find_namespace_packages(
        include=["jetseg", "jetseg.*", "jetsearch", "jetsearch.*"], exclude=["*.__pycache__"]
    )
    + DATA_PACKAGES
)
