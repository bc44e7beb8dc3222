"""The two data packages that live outside jetsearch/ in a checkout.

Everything else is in pyproject.toml. setuptools' ``packages.find`` finds the code packages; the
built-in spaces and studies sit at the top of the repository (``space/``, ``studies/``) and are
mapped into the wheel as ``jetsearch.builtin.space`` and ``jetsearch.builtin.studies``, which no
directory walk can find, so they are named here.
"""

from setuptools import find_packages, setup

DATA_PACKAGES = ["jetsearch.builtin.space", "jetsearch.builtin.studies"]

setup(
    packages=find_packages(include=["jetseg", "jetseg.*", "jetsearch", "jetsearch.*"])
    + DATA_PACKAGES
)
