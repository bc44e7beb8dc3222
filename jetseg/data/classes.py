"""The 11 CamVid classes of the SegNet version, the void index and the colours they are drawn in.

One place for what a label value means, shared by the datasets, the transforms (padding is
void), the losses and metrics (void is ignored) and the colour masks::

    >>> CAMVID_CLASSES[3], NUM_CLASSES, IGNORE_INDEX
    ('Road', 11, 11)
    >>> CAMVID_PALETTE[IGNORE_INDEX]      # void is drawn black
    array([0, 0, 0], dtype=uint8)
"""

from __future__ import annotations

import numpy as np

__all__ = ["CAMVID_CLASSES", "CAMVID_PALETTE", "IGNORE_INDEX", "NUM_CLASSES"]

CAMVID_CLASSES: tuple[str, ...] = (
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Sidewalk",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
)
NUM_CLASSES = len(CAMVID_CLASSES)
IGNORE_INDEX = NUM_CLASSES  # void: ignored by the loss and the metrics

# The SegNet CamVid colours, row i for class i, last row void.
CAMVID_PALETTE = np.array(
    [
        (128, 128, 128),  # Sky
        (128, 0, 0),  # Building
        (192, 192, 128),  # Pole
        (128, 64, 128),  # Road
        (60, 40, 222),  # Sidewalk
        (128, 128, 0),  # Tree
        (192, 128, 128),  # SignSymbol
        (64, 64, 128),  # Fence
        (64, 0, 128),  # Car
        (64, 64, 0),  # Pedestrian
        (0, 128, 192),  # Bicyclist
        (0, 0, 0),  # Void
    ],
    dtype=np.uint8,
)
CAMVID_PALETTE.setflags(write=False)
