from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from real_data import camvid_root

from jetseg.data import (
    CAMVID_CLASSES,
    CAMVID_PALETTE,
    IGNORE_INDEX,
    NUM_CLASSES,
    CamVid,
    DataError,
    build_datasets,
    colorize,
    detect_layout,
    overlay,
)
from jetseg.data.camvid import CAMVID32_COLOURS, merged_class_index

REAL_CAMVID = camvid_root()
HEIGHT, WIDTH = 12, 16
COLOUR_OF = {name: colour for colour, name in CAMVID32_COLOURS}


def frame_arrays(index: int) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic image and an index label (every value 0..11 occurs) for frame ``index``.

    The image is smooth (a colour ramp plus a little noise) so that JPEG keeps it close.
    """
    rng = np.random.default_rng(index)
    rows, columns = np.mgrid[0:HEIGHT, 0:WIDTH]
    ramp = np.stack([rows * 12, columns * 9, rows * 5 + columns * 5], axis=-1) + 20 * index
    image = np.clip(ramp + rng.integers(0, 4, ramp.shape), 0, 255).astype(np.uint8)
    label = ((np.arange(HEIGHT * WIDTH) + index) % (NUM_CLASSES + 1)).astype(np.uint8)
    return image, label.reshape(HEIGHT, WIDTH)


def save(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def make_segnet_root(root: Path, frames: dict[str, int], suffix: str = ".png") -> Path:
    """SegNet folders: {split}/f{i}{suffix} and {split}annot/f{i}.png."""
    for split, count in frames.items():
        for index in range(count):
            image, label = frame_arrays(index)
            extra = {"quality": 95} if suffix == ".jpg" else {}
            save(root / split / f"f{index}{suffix}", image, **extra)
            save(root / f"{split}annot" / f"f{index}.png", label)
    return root


def test_segnet_folders_load_exact_pixels(tmp_path):
    root = make_segnet_root(tmp_path / "camvid", {"train": 3, "val": 2})
    assert detect_layout(root) == "segnet"
    train = CamVid(root, "train")
    assert len(train) == 3 and len(CamVid(root, "val")) == 2
    assert [image.name for image, _ in train.files] == ["f0.png", "f1.png", "f2.png"]
    for index in range(3):
        image, label = train.raw(index)
        expected_image, expected_label = frame_arrays(index)
        np.testing.assert_array_equal(image, expected_image)
        np.testing.assert_array_equal(label, expected_label)
        assert image.dtype == np.uint8 and label.dtype == np.uint8
    image, label = train[1]
    assert image.dtype == torch.float32 and image.shape == (3, HEIGHT, WIDTH)
    assert label.dtype == torch.int64 and label.shape == (HEIGHT, WIDTH)
    torch.testing.assert_close(label, torch.from_numpy(frame_arrays(1)[1].astype(np.int64)))


def test_jpeg_frames_and_transform(tmp_path):
    root = make_segnet_root(tmp_path, {"train": 2}, suffix=".jpg")
    data = CamVid(root, "train", transform=lambda image, label: (image[:, ::-1], label[:, ::-1]))
    image, label = data.raw(0)
    expected_image, expected_label = frame_arrays(0)
    # JPEG is lossy, but quality 95 keeps the mean error small.
    assert np.abs(image.astype(int) - expected_image.astype(int)).mean() < 6
    np.testing.assert_array_equal(label, expected_label)
    _, flipped = data[0]
    np.testing.assert_array_equal(flipped.numpy(), expected_label[:, ::-1])


def test_class_pixel_counts_exclude_void(tmp_path):
    root = make_segnet_root(tmp_path, {"train": 3})
    data = CamVid(root, "train")
    labels = np.stack([frame_arrays(i)[1] for i in range(3)])
    expected = np.array([(labels == c).sum() for c in range(NUM_CLASSES)], dtype=np.int64)
    counts = data.class_pixel_counts()
    assert counts.dtype == np.int64 and counts.shape == (NUM_CLASSES,)
    np.testing.assert_array_equal(counts, expected)
    assert counts.sum() == labels.size - (labels == IGNORE_INDEX).sum()


def test_list_file_with_segnet_absolute_paths_keeps_its_order(tmp_path):
    root = make_segnet_root(tmp_path, {"train": 3})
    lines = [
        "/SegNet/CamVid/train/f2.png /SegNet/CamVid/trainannot/f2.png",
        "",
        "train/f0.png trainannot/f0.png",
    ]
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    data = CamVid(root, "train")
    assert [image.name for image, _ in data.files] == ["f2.png", "f0.png"]
    np.testing.assert_array_equal(data.raw(0)[1], frame_arrays(2)[1])


def test_list_file_alone_is_enough_to_detect_the_layout(tmp_path):
    save(tmp_path / "images" / "a.png", frame_arrays(0)[0])
    save(tmp_path / "labels" / "a.png", frame_arrays(0)[1])
    (tmp_path / "val.txt").write_text("images/a.png labels/a.png\n")
    assert detect_layout(tmp_path) == "segnet"
    assert len(CamVid(tmp_path, "val")) == 1


def test_limit_and_uncached_reads_match(tmp_path):
    root = make_segnet_root(tmp_path, {"train": 3})
    limited = CamVid(root, "train", limit=2)
    lazy = CamVid(root, "train", cache=False)
    assert len(limited) == 2
    for index in range(2):
        for cached, fresh in zip(limited.raw(index), lazy.raw(index), strict=True):
            np.testing.assert_array_equal(cached, fresh)
    with pytest.raises(IndexError):
        limited.raw(2)
    with pytest.raises(ValueError, match="limit"):
        CamVid(root, "train", limit=0)


def test_cached_frames_are_read_only(tmp_path):
    data = CamVid(make_segnet_root(tmp_path, {"train": 1}), "train")
    image, label = data.raw(0)
    with pytest.raises(ValueError):
        label[0, 0] = 3


# --- bad data --------------------------------------------------------------------------------


def test_missing_label_names_the_image(tmp_path):
    root = make_segnet_root(tmp_path, {"train": 2})
    (root / "trainannot" / "f1.png").unlink()
    with pytest.raises(DataError, match=r"missing label .*f1\.png.*for image .*f1\.png"):
        CamVid(root, "train")


def test_missing_label_in_list_file_names_the_line(tmp_path):
    root = make_segnet_root(tmp_path, {"train": 1})
    (root / "train.txt").write_text("train/f0.png trainannot/nope.png\n")
    with pytest.raises(DataError, match=r"train\.txt line 1: missing label .*nope\.png"):
        CamVid(root, "train")


def test_size_mismatch_names_both_files(tmp_path):
    root = make_segnet_root(tmp_path, {"train": 2})
    save(root / "trainannot" / "f1.png", np.zeros((HEIGHT, WIDTH + 1), np.uint8))
    with pytest.raises(DataError, match=r"f1\.png is 16x12 but its label .*f1\.png is 17x12"):
        CamVid(root, "train")


def test_bad_label_value_names_file_and_values(tmp_path):
    root = make_segnet_root(tmp_path, {"train": 2})
    label = frame_arrays(0)[1].copy()
    label[0, :2] = (12, 255)
    save(root / "trainannot" / "f0.png", label)
    with pytest.raises(DataError, match=r"f0\.png has values \[12, 255\] outside the class set"):
        CamVid(root, "train")


def test_rgb_label_in_segnet_layout_is_refused(tmp_path):
    root = make_segnet_root(tmp_path, {"train": 1})
    save(root / "trainannot" / "f0.png", frame_arrays(0)[0])
    with pytest.raises(DataError, match=r"f0\.png must be a single-channel"):
        CamVid(root, "train")


def test_empty_split_names_root_and_split(tmp_path):
    root = make_segnet_root(tmp_path, {"train": 1})
    with pytest.raises(DataError, match=rf"split 'val' of {re.escape(str(tmp_path))} is empty"):
        CamVid(root, "val")
    (root / "test").mkdir()
    (root / "testannot").mkdir()
    with pytest.raises(DataError, match=r"split 'test' of .* is empty"):
        CamVid(root, "test")


def test_unreadable_file_is_named(tmp_path):
    root = make_segnet_root(tmp_path, {"train": 2})
    (root / "train" / "f1.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"cannot read .*train/f1\.png"):
        CamVid(root, "train")


def test_root_in_no_layout(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(DataError, match="holds no CamVid layout"):
        detect_layout(tmp_path)
    with pytest.raises(DataError, match="is not a directory"):
        detect_layout(tmp_path / "missing")


# --- the 32-class colour layout --------------------------------------------------------------

# Names of the 32-class release and the 11-class index the standard merge gives them.
MERGE_EXAMPLES = {
    "Sky": 0,
    "Wall": 1,
    "Archway": 1,
    "TrafficCone": 2,
    "Road": 3,
    "LaneMkgsDriv": 3,
    "RoadShoulder": 4,
    "VegetationMisc": 5,
    "TrafficLight": 6,
    "Misc_Text": 6,
    "Fence": 7,
    "SUVPickupTruck": 8,
    "Train": 8,
    "Child": 9,
    "Animal": 9,
    "MotorcycleScooter": 10,
    "Void": 11,
}


def colour_mask(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """A (HEIGHT, WIDTH) mask cycling through ``names``, and the expected 11-class label."""
    cells = np.arange(HEIGHT * WIDTH).reshape(HEIGHT, WIDTH) % len(names)
    colours = np.array([COLOUR_OF[name] for name in names], dtype=np.uint8)
    expected = np.array([MERGE_EXAMPLES[name] for name in names], dtype=np.uint8)
    return colours[cells], expected[cells]


def write_label_colors(path: Path, extra: str = "") -> None:
    lines = [f"{r} {g} {b}\t\t{name}" for (r, g, b), name in CAMVID32_COLOURS]
    path.write_text("\n".join(lines) + "\n" + extra)


def test_colour_layout_in_sibling_folders_merges_classes(tmp_path):
    names = list(MERGE_EXAMPLES)
    for index in range(3):
        save(tmp_path / "701_StillsRaw_full" / f"0001TP_{index:06d}.png", frame_arrays(index)[0])
        mask, _ = colour_mask(names[index:] + names[:index])
        save(tmp_path / "LabeledApproved_full" / f"0001TP_{index:06d}_L.png", mask)
    write_label_colors(tmp_path / "label_colors.txt")
    (tmp_path / "train.txt").write_text("0001TP_000002\n0001TP_000000.png\n")
    assert detect_layout(tmp_path) == "colour"
    data = CamVid(tmp_path, "train")
    assert [image.name for image, _ in data.files] == ["0001TP_000002.png", "0001TP_000000.png"]
    _, expected = colour_mask(names[2:] + names[:2])
    np.testing.assert_array_equal(data.raw(0)[1], expected)
    np.testing.assert_array_equal(data.raw(0)[0], frame_arrays(2)[0])
    assert "label_colors.txt" in data.description
    assert len(CamVid(tmp_path, "all")) == 3


def test_merge_table_matches_the_standard_merge():
    for name, index in MERGE_EXAMPLES.items():
        assert merged_class_index(name) == index, name
    assert merged_class_index("column pole") == CAMVID_CLASSES.index("Pole")
    assert merged_class_index("SomethingUnlisted") == IGNORE_INDEX
    merged = {merged_class_index(name) for _, name in CAMVID32_COLOURS}
    assert merged == set(range(NUM_CLASSES + 1))


def test_colour_layout_split_folders_with_and_without_table(tmp_path):
    names = ["Sky", "Wall", "Child", "Void"]
    mask, expected = colour_mask(names)
    # train/ holds frames and masks together; val/ keeps masks in a sibling val_labels/.
    save(tmp_path / "train" / "a.png", frame_arrays(0)[0])
    save(tmp_path / "train" / "a_L.png", mask)
    save(tmp_path / "val" / "b.png", frame_arrays(1)[0])
    save(tmp_path / "val_labels" / "b_L.png", mask)
    assert detect_layout(tmp_path) == "colour"
    train, val = CamVid(tmp_path, "train"), CamVid(tmp_path, "val")
    np.testing.assert_array_equal(train.raw(0)[1], expected)
    np.testing.assert_array_equal(val.raw(0)[1], expected)
    assert "built-in" in train.description


def test_class_dict_csv_is_read(tmp_path):
    save(tmp_path / "train" / "a.png", frame_arrays(0)[0])
    mask = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    mask[:, : WIDTH // 2] = (10, 20, 30)
    save(tmp_path / "train" / "a_L.png", mask)
    (tmp_path / "class_dict.csv").write_text("name,r,g,b\nTruck_Bus,10,20,30\nVoid,0,0,0\n")
    label = CamVid(tmp_path, "train").raw(0)[1]
    assert (label[:, : WIDTH // 2] == CAMVID_CLASSES.index("Car")).all()
    assert (label[:, WIDTH // 2 :] == IGNORE_INDEX).all()


def test_unknown_mask_colour_names_file_and_colour(tmp_path):
    save(tmp_path / "train" / "a.png", frame_arrays(0)[0])
    mask, _ = colour_mask(["Sky", "Road"])
    mask[3, 4] = (1, 2, 3)
    save(tmp_path / "train" / "a_L.png", mask)
    write_label_colors(tmp_path / "label_colors.txt")
    with pytest.raises(DataError, match=r"mask .*a_L\.png has colours \[\(1, 2, 3\)\]"):
        CamVid(tmp_path, "train")


def test_colour_layout_missing_mask_and_bad_table(tmp_path):
    save(tmp_path / "train" / "a.png", frame_arrays(0)[0])
    save(tmp_path / "train" / "b.png", frame_arrays(1)[0])
    save(tmp_path / "train" / "a_L.png", colour_mask(["Sky"])[0])
    with pytest.raises(DataError, match=r"missing label b_L\.png for image .*b\.png"):
        CamVid(tmp_path, "train")
    (tmp_path / "train" / "b.png").unlink()
    write_label_colors(tmp_path / "label_colors.txt", extra="12 34\tBroken\n")
    with pytest.raises(DataError, match=r"label_colors\.txt line 33: expected 'R G B"):
        CamVid(tmp_path, "train")


# --- helpers and the public entry point ------------------------------------------------------


def test_colorize_and_overlay():
    label = np.arange(12, dtype=np.uint8).reshape(3, 4)
    colours = colorize(label)
    assert colours.shape == (3, 4, 3) and colours.dtype == np.uint8
    np.testing.assert_array_equal(colours.reshape(-1, 3), CAMVID_PALETTE)
    assert tuple(CAMVID_PALETTE[CAMVID_CLASSES.index("Sidewalk")]) == (60, 40, 222)
    image = np.full((3, 4, 3), 200, np.uint8)
    np.testing.assert_array_equal(overlay(image, label, alpha=0.0), image)
    full = overlay(image, label, alpha=1.0)
    np.testing.assert_array_equal(full[label != IGNORE_INDEX], colours[label != IGNORE_INDEX])
    np.testing.assert_array_equal(full[label == IGNORE_INDEX], image[label == IGNORE_INDEX])
    with pytest.raises(ValueError, match="0..11"):
        colorize(np.array([[12]]))


def test_build_datasets_on_a_camvid_root(tmp_path):
    root = make_segnet_root(tmp_path, {"train": 3, "val": 2})
    train, val, info = build_datasets(root, size=(6, 8), flip=True, limit=2)
    assert (info.name, info.synthetic, info.root) == ("camvid", False, root)
    assert (info.train_size, info.val_size) == (2, 2) == (len(train), len(val))
    assert info.class_names == CAMVID_CLASSES and info.num_classes == NUM_CLASSES
    assert "CamVid" in info.description and "synthetic" not in info.description
    image, label = val[0]
    assert image.shape == (3, 6, 8) and label.shape == (6, 8)
    batch = next(iter(torch.utils.data.DataLoader(train, batch_size=2)))
    assert batch[0].shape == (2, 3, 6, 8) and batch[1].dtype == torch.int64
    with pytest.raises(DataError, match="not a directory"):
        build_datasets(tmp_path / "nowhere", size=None)


@pytest.mark.skipif(not REAL_CAMVID.is_dir(), reason=f"no CamVid copy at {REAL_CAMVID}")
def test_real_camvid_frames_load():
    for split in ("train", "val"):
        data = CamVid(REAL_CAMVID, split, limit=3)
        assert data.layout == "segnet" and len(data) == 3
        for index in range(3):
            image, label = data.raw(index)
            assert image.shape == (360, 480, 3) and label.shape == (360, 480)
            assert label.max() <= IGNORE_INDEX
        tensor_image, tensor_label = data[0]
        assert tensor_image.shape == (3, 360, 480) and tensor_label.dtype == torch.int64
        assert data.class_pixel_counts().sum() > 0
