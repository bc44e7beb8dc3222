"""Suite-wide settings."""

from __future__ import annotations

import torch

# One intra-op thread: tests often run beside subprocesses (workers, CLI runs) on a 2-core
# machine, where two spinning torch threads per process slow everything down many times over.
torch.set_num_threads(1)
