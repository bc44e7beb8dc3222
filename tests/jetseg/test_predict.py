"""Predictions from a checkpoint: scores on a split, masks of images, overlay panels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console
from train_cases import SIZE
from train_cases import synthetic_run as train_synthetic_run

from jetseg.checkpoint import load_checkpoint
from jetseg.data import (
    CAMVID_CLASSES,
    CAMVID_PALETTE,
    IGNORE_INDEX,
    build_datasets,
    colorize,
    to_uint8_image,
)
from jetseg.predict import (
    PANEL_TITLES,
    draw_panels,
    evaluate_checkpoint,
    panel_layout,
    predict_images,
    write_overlays,
)
from jetseg.results import EvalMetrics, metrics_table


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """A whole run_training directory: two epochs of the tiny network on synthetic frames."""
    return train_synthetic_run(tmp_path_factory.mktemp("run"))


def test_summary_and_tables_state_synthetic_data(synthetic_run):
    out, _, result = synthetic_run
    console = Console(width=140, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(result.summary())
    text = console.export_text()
    assert "SYNTHETIC DATA" in text and "Sky" in text and "mIoU" in text
    assert f"{100 * result.best_miou:.2f}%" in text

    metrics = evaluate_checkpoint(out / "best.pt", None, "val")
    assert isinstance(metrics, EvalMetrics) and metrics.synthetic_data
    assert metrics.frames == 16 and len(metrics.per_class_iou) == 11  # the default val split
    console.print(metrics_table(metrics, title="best.pt on val"))
    assert "SYNTHETIC DATA" in console.export_text()


def test_predict_images_writes_mask_and_overlay_of_the_image_size(synthetic_run, tmp_path):
    out, _, _ = synthetic_run
    frame = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    Image.fromarray(frame).save(tmp_path / "street.png")
    written = predict_images(
        out / "best.pt", [tmp_path / "street.png"], tmp_path / "pred", size=SIZE
    )
    assert [p.name for p in written] == ["street_mask.png", "street_overlay.png"]
    for path in written:
        with Image.open(path) as image:
            assert image.size == (53, 37)


def test_predict_images_names_a_missing_or_unreadable_image(synthetic_run, tmp_path):
    out, _, _ = synthetic_run
    with pytest.raises(FileNotFoundError, match="image .*nowhere.png does not exist"):
        predict_images(out / "best.pt", [tmp_path / "nowhere.png"], tmp_path / "pred")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="cannot read image .*notes.png"):
        predict_images(out / "best.pt", [tmp_path / "notes.png"], tmp_path / "pred")
    assert not (tmp_path / "pred").exists()  # nothing is written before every image is checked


def test_predict_images_refuses_two_images_that_would_write_the_same_files(synthetic_run, tmp_path):
    out, _, _ = synthetic_run
    frame = np.zeros((20, 30, 3), dtype=np.uint8)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.fromarray(frame).save(tmp_path / folder / "street.png")
    images = [tmp_path / "a" / "street.png", tmp_path / "b" / "street.png"]
    with pytest.raises(ValueError, match="would write the same output files"):
        predict_images(out / "best.pt", images, tmp_path / "pred")
    assert not (tmp_path / "pred").exists()


def test_evaluate_checkpoint_refuses_a_split_the_synthetic_data_lacks(synthetic_run):
    out, _, _ = synthetic_run
    with pytest.raises(ValueError, match="splits train and val, not 'test'"):
        evaluate_checkpoint(out / "best.pt", None, "test")


def test_overlays_are_image_truth_and_prediction_side_by_side(synthetic_run, tmp_path):
    out, _, _ = synthetic_run
    model, _, _ = load_checkpoint(out / "best.pt")
    _, val, _ = build_datasets(None, SIZE, synthetic_images=(1, 2))
    written = write_overlays(model, val, tmp_path / "overlays", count=5)
    assert [p.name for p in written] == ["000.png", "001.png"]  # only as many as there are
    image, label = val[1]
    with torch.no_grad():
        prediction = model(image.unsqueeze(0)).argmax(dim=1)[0].numpy().astype(np.uint8)
    layout = panel_layout(*SIZE)
    with Image.open(written[1]) as panel:
        assert panel.size == layout.size
        pixels = np.asarray(panel)
    top, width = layout.panels_top, SIZE[1]
    frames = pixels[top : top + SIZE[0]]
    np.testing.assert_array_equal(frames[:, :width], to_uint8_image(image))
    np.testing.assert_array_equal(frames[:, width : 2 * width], colorize(label.numpy()))
    np.testing.assert_array_equal(frames[:, 2 * width :], colorize(prediction))


def _bright(pixels: np.ndarray) -> np.ndarray:
    return (pixels >= 200).all(axis=-1)  # the titles' and names' text colour


@pytest.mark.parametrize("size", [(48, 64), (360, 480)])
def test_panels_carry_their_titles_and_a_legend_of_every_class_colour(size):
    height, width = size
    rng = np.random.default_rng(0)
    image = rng.integers(0, 100, (height, width, 3), dtype=np.uint8)  # dark: no text colour
    truth = np.full((height, width), IGNORE_INDEX, dtype=np.uint8)
    prediction = np.zeros((height, width), dtype=np.uint8)
    pixels = draw_panels(image, truth, prediction)
    layout = panel_layout(height, width)
    assert pixels.shape == (layout.size[1], layout.size[0], 3)
    assert layout.title_px > 0 and layout.legend_px > 0
    np.testing.assert_array_equal(
        pixels[layout.panels_top : layout.panels_top + height, :width], image
    )

    # A title over each of the three panels, one per panel: text in every third of the strip.
    titles = _bright(pixels[: layout.title_px])
    assert [titles[:, i * width : (i + 1) * width].any() for i in range(3)] == [True] * 3
    assert len(PANEL_TITLES) == 3 and PANEL_TITLES[1] == "truth"
    # The legend: a swatch of every class colour and void (black), with names beside them.
    legend = pixels[layout.panels_top + height :]
    colours = {tuple(c) for c in legend.reshape(-1, 3).tolist()}
    for colour in CAMVID_PALETTE.tolist():
        assert tuple(colour) in colours, colour
    assert _bright(legend).sum() > 20 * len(CAMVID_PALETTE)  # the names, not just swatches
    assert sum(len(row) for row in layout.legend_rows) == len(CAMVID_CLASSES) + 1
    # Wider frames fit the legend in fewer rows; the panels never change size.
    assert len(panel_layout(height, 4 * width).legend_rows) <= len(layout.legend_rows)


def test_panels_refuse_maps_of_another_size():
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="must have one size"):
        draw_panels(image, np.zeros((20, 30), np.uint8), np.zeros((20, 31), np.uint8))
