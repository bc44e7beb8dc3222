"""The class list: one definition that every user of a label value shares."""

from __future__ import annotations

import numpy as np
import pytest

import jetseg.data
from jetseg.data import camvid, classes, synthetic, transforms
from jetseg.data.classes import CAMVID_CLASSES, CAMVID_PALETTE, IGNORE_INDEX, NUM_CLASSES


def test_void_follows_the_eleven_classes_and_has_a_colour():
    assert NUM_CLASSES == len(CAMVID_CLASSES) == 11 and IGNORE_INDEX == NUM_CLASSES
    assert len(set(CAMVID_CLASSES)) == NUM_CLASSES
    assert CAMVID_PALETTE.shape == (NUM_CLASSES + 1, 3) and CAMVID_PALETTE.dtype == np.uint8
    assert tuple(CAMVID_PALETTE[IGNORE_INDEX]) == (0, 0, 0)
    # Every class is drawn in a colour of its own, so a mask can be read back.
    assert len({tuple(row) for row in CAMVID_PALETTE}) == NUM_CLASSES + 1
    with pytest.raises(ValueError, match="read-only"):
        CAMVID_PALETTE[0, 0] = 1


def test_every_user_shares_the_one_definition():
    for module in (jetseg.data, camvid, synthetic, transforms):
        for name in ("CAMVID_CLASSES", "CAMVID_PALETTE", "IGNORE_INDEX", "NUM_CLASSES"):
            if hasattr(module, name):
                assert getattr(module, name) is getattr(classes, name), (module, name)
    assert synthetic.VOID == IGNORE_INDEX
    # The 32-class merge only ever targets the 11 classes.
    assert set(camvid.CAMVID32_TO_11.values()) == set(CAMVID_CLASSES)
