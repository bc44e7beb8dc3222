"""Suite-wide settings."""

from __future__ import annotations

import pytest
import torch

# One intra-op thread: tests often run beside subprocesses (workers, CLI runs) on a 2-core
# machine, where two spinning torch threads per process slow everything down many times over.
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray instance with two CPUs, for one test module (Ray backend tests)."""
    from jetsearch.distributed import import_ray, shutdown_ray

    ray = import_ray()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    shutdown_ray(ray)
