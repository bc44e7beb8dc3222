"""Sequence-held-out splits: whole driving sequences kept out of training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from real_data import camvid_root

from jetseg.data import DataError, build_datasets, build_holdout, known_sequences, sequence_of

REAL_CAMVID = camvid_root()


def make_root(root: Path, frames: dict[str, list[str]]) -> Path:
    """SegNet folders whose frame names carry CamVid-style sequence prefixes."""
    rng = np.random.default_rng(0)
    for split, names in frames.items():
        for name in names:
            (root / split).mkdir(parents=True, exist_ok=True)
            (root / f"{split}annot").mkdir(parents=True, exist_ok=True)
            image = rng.integers(0, 255, (8, 12, 3), dtype=np.uint8)
            label = rng.integers(0, 12, (8, 12), dtype=np.uint8)
            Image.fromarray(image).save(root / split / f"{name}.png")
            Image.fromarray(label).save(root / f"{split}annot" / f"{name}.png")
    return root


FRAMES = {
    "train": ["0001TP_000010", "0001TP_000040", "0006R0_f00930", "0016E5_00390", "0016E5_00420"],
    "val": ["0016E5_07959", "0016E5_07961"],
}


def test_sequence_of_reads_the_frame_name_prefix():
    assert sequence_of("train/0001TP_006690.jpg") == "0001TP"
    assert sequence_of(Path("/x/Seq05VD_f00000_L.png")) == "Seq05VD"


def test_holdout_split_is_disjoint_by_sequence(tmp_path):
    root = make_root(tmp_path / "camvid", FRAMES)
    assert known_sequences(root) == ["0001TP", "0006R0", "0016E5"]
    train, val, info = build_datasets(root, holdout=("0001TP",))
    heldout = build_holdout(root, ("0001TP",))
    train_seqs = {sequence_of(image) for image, _ in train.files}
    held_seqs = {sequence_of(image) for image, _ in heldout.files}
    assert train_seqs == {"0006R0", "0016E5"}
    assert held_seqs == {"0001TP"}
    assert len(train) == 3 and len(heldout) == 2 and len(val) == 2
    assert info.holdout == ("0001TP",)
    assert "0001TP held out" in info.description
    image, label = heldout[1]
    assert image.shape == (3, 8, 12) and label.shape == (8, 12)


def test_holding_out_the_val_sequence_gathers_it_from_both_splits(tmp_path):
    root = make_root(tmp_path / "camvid", FRAMES)
    train, _, _ = build_datasets(root, holdout=("0016E5",))
    heldout = build_holdout(root, ("0016E5",))
    assert {sequence_of(i) for i, _ in train.files} == {"0001TP", "0006R0"}
    assert len(heldout) == 4  # two train frames and two val frames of 0016E5


def test_an_unknown_sequence_is_refused_with_the_known_names(tmp_path):
    root = make_root(tmp_path / "camvid", FRAMES)
    with pytest.raises(DataError) as err:
        build_datasets(root, holdout=("0002XX",))
    assert "0002XX" in str(err.value)
    assert "0001TP, 0006R0, 0016E5" in str(err.value)
    with pytest.raises(DataError, match="0001TP, 0006R0, 0016E5"):
        build_holdout(root, ("0001tp",))


def test_holding_out_every_training_sequence_is_refused(tmp_path):
    root = make_root(tmp_path / "camvid", FRAMES)
    with pytest.raises(DataError, match="no frames left"):
        build_datasets(root, holdout=("0001TP", "0006R0", "0016E5"))


def test_synthetic_data_has_no_sequences_to_hold_out():
    with pytest.raises(DataError, match="needs CamVid"):
        build_datasets(None, (32, 48), holdout=("0001TP",))


@pytest.mark.skipif(not REAL_CAMVID.is_dir(), reason=f"CamVid is not at {REAL_CAMVID}")
def test_real_camvid_holdout_counts():
    train, val, _ = build_datasets(REAL_CAMVID, holdout=("0001TP",), cache=False)
    heldout = build_holdout(REAL_CAMVID, ("0001TP",), cache=False)
    assert (len(train), len(val), len(heldout)) == (305, 101, 62)
    assert not {sequence_of(i) for i, _ in train.files} & {sequence_of(i) for i, _ in heldout.files}
