from __future__ import annotations

import doctest
import json
import math

import numpy as np
import pytest
import torch

import jetseg.metrics
from jetseg.metrics import (
    ConfusionMatrix,
    SegMetrics,
    confusion_matrix,
    iou_from_confusion,
    miou_from_confusion,
    pixel_accuracy_from_confusion,
)

VOID = 11


def reference_confusion(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """Explicit loop over pixels, independent of the implementation."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    for true_label, predicted in zip(target.ravel().tolist(), pred.ravel().tolist(), strict=True):
        if true_label == VOID or not 0 <= true_label < num_classes:
            continue
        matrix[true_label, predicted] += 1
    return matrix


def reference_iou(matrix: np.ndarray) -> np.ndarray:
    iou = np.full(matrix.shape[0], np.nan)
    for c in range(matrix.shape[0]):
        tp = matrix[c, c]
        fp = matrix[:, c].sum() - tp
        fn = matrix[c, :].sum() - tp
        if tp + fp + fn > 0:
            iou[c] = tp / (tp + fp + fn)
    return iou


def random_batch(seed: int, num_classes: int = 11, shape=(3, 7, 9)):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, num_classes, size=shape)
    target[rng.random(shape) < 0.2] = VOID
    pred = rng.integers(0, num_classes, size=shape)
    # make predictions agree often enough that IoUs are neither all 0 nor trivial
    agree = rng.random(shape) < 0.5
    pred[agree & (target != VOID)] = target[agree & (target != VOID)]
    return pred, target


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_confusion_matrix_matches_numpy_reference(seed):
    pred, target = random_batch(seed)
    expected = reference_confusion(pred, target, 11)
    got = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), 11)
    assert got.dtype == torch.int64
    np.testing.assert_array_equal(got.numpy(), expected)
    assert int(got.sum()) == int((target != VOID).sum())

    np.testing.assert_allclose(iou_from_confusion(got).numpy(), reference_iou(expected))
    assert miou_from_confusion(got) == pytest.approx(np.nanmean(reference_iou(expected)))
    assert pixel_accuracy_from_confusion(got) == pytest.approx(np.trace(expected) / expected.sum())


def test_confusion_matrix_with_np_add_at_and_uint8_labels():
    # uint8 labels (as loaded from PNG) must not wrap around when multiplied by C.
    rng = np.random.default_rng(7)
    num_classes = 30  # 29 * 30 > 255
    target = rng.integers(0, num_classes, size=(2, 8, 8)).astype(np.uint8)
    target[0, 0, :4] = VOID
    target[1, 1, :3] = 255  # outside [0, C): dropped too
    pred = rng.integers(0, num_classes, size=(2, 8, 8)).astype(np.uint8)
    keep = (target != VOID) & (target < num_classes)
    expected = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(expected, (target[keep].astype(np.int64), pred[keep].astype(np.int64)), 1)
    got = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), num_classes)
    np.testing.assert_array_equal(got.numpy(), expected)


def test_accumulation_over_batches_equals_one_big_matrix():
    pred, target = random_batch(11, shape=(6, 5, 4))
    logits = torch.randn(6, 11, 5, 4)
    argmax = logits.argmax(1)
    whole = ConfusionMatrix(11)
    whole.update(logits, torch.from_numpy(target))
    split = ConfusionMatrix(11)
    for start, stop in ((0, 2), (2, 5), (5, 6)):
        split.update(logits[start:stop], torch.from_numpy(target[start:stop]))
    assert torch.equal(whole.matrix, split.matrix)
    assert torch.equal(whole.matrix, confusion_matrix(argmax, torch.from_numpy(target), 11))
    assert whole.compute() == split.compute()

    # unbatched (H, W) indices and (C, H, W) logits are accepted and add up the same way
    one_by_one = ConfusionMatrix(11)
    for i in range(6):
        one_by_one.update(logits[i], torch.from_numpy(target[i]))
    assert torch.equal(one_by_one.matrix, whole.matrix)

    whole.reset()
    assert int(whole.matrix.sum()) == 0


def test_miou_is_over_the_whole_split_not_averaged_per_image():
    # image 1: one class-0 pixel, right. image 2: 99 class-1 pixels, all called class 0.
    first_pred, first_target = torch.tensor([[0]]), torch.tensor([[0]])
    second_pred = torch.zeros(9, 11, dtype=torch.long)
    second_target = torch.ones(9, 11, dtype=torch.long)
    metric = ConfusionMatrix(2)
    metric.update(first_pred, first_target)
    metric.update(second_pred, second_target)
    scores = metric.compute()
    # split-wide: class 0 IoU = 1 / (1 + 99), class 1 IoU = 0
    assert scores.per_class_iou == pytest.approx((0.01, 0.0))
    assert scores.miou == pytest.approx(0.005)
    assert scores.pixel_accuracy == pytest.approx(0.01)


def test_fully_wrong_prediction_gives_zero_miou():
    target = torch.tensor([[[0, 1, 2, 3], [3, 2, VOID, 0]]])
    pred = torch.where(target == VOID, target.new_tensor(0), (target + 1) % 4)
    metric = ConfusionMatrix(4)
    metric.update(pred, target)
    scores = metric.compute()
    assert scores.miou == 0.0
    assert scores.pixel_accuracy == 0.0
    assert all(value == 0.0 for value in scores.per_class_iou)


def test_perfect_prediction_gives_one():
    _, target = random_batch(5)
    target = torch.from_numpy(target)
    pred = torch.where(target == VOID, torch.zeros_like(target), target)
    metric = ConfusionMatrix(11)
    metric.update(pred, target)
    result = metric.compute()
    assert result.miou == 1.0
    assert result.pixel_accuracy == 1.0


def test_void_predictions_do_not_count():
    target = torch.tensor([[0, 1, VOID, VOID]])
    good = torch.tensor([[0, 1, 0, 0]])
    other = torch.tensor([[0, 1, 1, 1]])
    assert torch.equal(confusion_matrix(good, target, 2), confusion_matrix(other, target, 2))


def test_absent_class_is_nan_and_excluded_from_mean():
    target = torch.tensor([[0, 0, 1, 1]])
    pred = torch.tensor([[0, 1, 1, 1]])
    metric = ConfusionMatrix(3, class_names=["a", "b", "c"])
    metric.update(pred, target)
    scores = metric.compute()
    assert math.isnan(scores.per_class_iou[2])
    # class 0: 1 / 2, class 1: 2 / 3; the mean is over these two only
    assert scores.per_class_iou[:2] == pytest.approx((0.5, 2 / 3))
    assert scores.miou == pytest.approx((0.5 + 2 / 3) / 2)

    as_dict = scores.to_dict()
    assert as_dict["per_class_iou"][2] is None
    assert as_dict["class_names"] == ["a", "b", "c"]
    json.dumps(as_dict, allow_nan=False)


def test_predicted_but_absent_class_counts_as_zero():
    target = torch.tensor([[0, 0, 0, 0]])
    pred = torch.tensor([[0, 0, 0, 1]])
    metric = ConfusionMatrix(2)
    metric.update(pred, target)
    result = metric.compute()
    assert result.per_class_iou == pytest.approx((0.75, 0.0))
    assert result.miou == pytest.approx(0.375)


def test_empty_split_gives_nan_and_json_none():
    scores = ConfusionMatrix(3).compute()
    assert math.isnan(scores.miou) and math.isnan(scores.pixel_accuracy)
    assert scores.to_dict()["miou"] is None
    assert isinstance(scores, SegMetrics)


def test_bad_inputs_are_rejected_with_clear_messages():
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2).long(), 4)
    with pytest.raises(ValueError, match="argmax"):
        confusion_matrix(torch.zeros(2, 2), torch.zeros(2, 2).long(), 4)
    with pytest.raises(ValueError, match=r"outside \[0, 4\).*\[7\]"):
        confusion_matrix(torch.tensor([[7, 0]]), torch.tensor([[1, 0]]), 4)
    with pytest.raises(ValueError, match="num_classes"):
        ConfusionMatrix(0)
    with pytest.raises(ValueError, match="class_names must have num_classes=3"):
        ConfusionMatrix(3, class_names=["a", "b"])
    with pytest.raises(ValueError, match="expected num_classes=3"):
        ConfusionMatrix(3).update(torch.randn(1, 4, 2, 2), torch.zeros(1, 2, 2).long())
    with pytest.raises(ValueError, match="class axis"):
        ConfusionMatrix(3).update(torch.randn(1, 2, 2), torch.zeros(1, 2, 2).long())


def test_module_docstring_example_runs():
    result = doctest.testmod(jetseg.metrics, raise_on_error=False)
    assert result.attempted > 0
    assert result.failed == 0


def test_frame_counts_sum_to_the_split_and_bootstrap_spreads_them():
    from jetseg.metrics import bootstrap_miou, frame_counts

    generator = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 4, (5, 6, 7), generator=generator)
    target = torch.randint(0, 5, (5, 6, 7), generator=generator)  # 4 = void
    counts = frame_counts(pred, target, num_classes=4, ignore_index=4)
    assert counts.shape == (5, 3, 4)
    matrix = confusion_matrix(pred, target, 4, 4)
    tp = matrix.diagonal()
    assert torch.equal(counts.sum(0), torch.stack([tp, matrix.sum(0) - tp, matrix.sum(1) - tp]))
    std, low, high = bootstrap_miou(counts, samples=400)
    assert std > 0 and low <= miou_from_confusion(matrix) <= high
    # Five copies of one frame: every resample is that frame, no spread at all.
    same = counts[:1].repeat(5, 1, 1)
    assert bootstrap_miou(same, samples=50)[0] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match=r"counts must be \(frames, 3, classes\)"):
        bootstrap_miou(counts[0])
