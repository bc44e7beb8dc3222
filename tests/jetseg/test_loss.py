from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from jetseg.loss import (
    LOSS_NAMES,
    CrossEntropy,
    JetLoss,
    JetLossCE,
    build_loss,
    cui_class_weights,
)

VOID = 11


def random_inputs(seed: int, batch=2, classes=4, height=5, width=6, void_share=0.2, scale=3.0):
    generator = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(batch, classes, height, width, generator=generator)
    target = torch.randint(0, classes, (batch, height, width), generator=generator)
    void = torch.rand(batch, height, width, generator=generator) < void_share
    return logits, target.masked_fill(void, VOID)


def confident_logits(labels: torch.Tensor, classes: int, margin: float = 50.0) -> torch.Tensor:
    """Logits (B, C, H, W) with `margin` on `labels` and 0 elsewhere."""
    return margin * F.one_hot(labels, classes).permute(0, 3, 1, 2).float()


# ---------------------------------------------------------------- JetLoss values


def test_hand_computed_two_class_example():
    # One 2x2 image, 2 classes. p(class 0) per pixel, p(class 1) = 1 - p(class 0).
    p0 = torch.tensor([0.9, 0.6, 0.2, 0.4])
    target = torch.tensor([0, 0, 0, 1]).reshape(1, 2, 2)
    logits = torch.stack([p0.log(), (1 - p0).log()]).reshape(1, 2, 2, 2)  # softmax gives p back
    weights = [0.25, 0.75]
    # class 0 is the target at pixels 1-3, class 1 at pixel 4:
    #   TP0 = 0.9 + 0.6 + 0.2 = 1.7   FP0 = 0.4               FN0 = 0.1 + 0.4 + 0.8 = 1.3
    #   TP1 = 0.6                     FP1 = 0.1 + 0.4 + 0.8    FN1 = 0.4
    recall = 0.25 * 1.7 / (1.7 + 1.3) + 0.75 * 0.6 / (0.6 + 0.4)
    precision = 0.25 * 1.7 / (1.7 + 0.4) + 0.75 * 0.6 / (0.6 + 1.3)
    soft_iou = 0.25 * 1.7 / (1.7 + 0.4 + 1.3) + 0.75 * 0.6 / (0.6 + 1.3 + 0.4)
    expected = (1 - recall) + (1 - precision) + (1 - soft_iou)  # 1.648458...

    loss = JetLoss(weights, eps=1e-9)
    assert float(loss(logits, target)) == pytest.approx(expected, abs=1e-5)
    terms = loss.terms(logits, target)
    assert float(terms["recall"]) == pytest.approx(recall, abs=1e-6)
    assert float(terms["precision"]) == pytest.approx(precision, abs=1e-6)
    assert float(terms["soft_iou"]) == pytest.approx(soft_iou, abs=1e-6)
    assert float(terms["loss"]) == pytest.approx(expected, abs=1e-5)

    # the same image with a void pixel added on the right: nothing changes
    void_logits = torch.empty(1, 2, 2, 3)
    void_logits[:, :, :, :2] = logits
    void_logits[0, :, :, 2] = torch.tensor([[7.0, 7.0], [-3.0, -3.0]])
    void_target = torch.tensor([[0, 0, VOID], [0, 1, VOID]])[None]
    assert float(loss(void_logits, void_target)) == pytest.approx(expected, abs=1e-5)


def test_eps_is_part_of_the_formula():
    # One pixel of class 0 predicted with p = 0.5 over 2 classes, uniform weights, eps = 0.5:
    #   TP0 = 0.5, FP0 = 0, FN0 = 0.5;  TP1 = 0, FP1 = 0.5, FN1 = 0
    logits = torch.zeros(1, 2, 1, 1)
    target = torch.zeros(1, 1, 1, dtype=torch.long)
    eps = 0.5
    recall = 0.5 * (0.5 + eps) / (1.0 + eps) + 0.5 * (0 + eps) / (0 + eps)
    precision = 0.5 * (0.5 + eps) / (0.5 + eps) + 0.5 * (0 + eps) / (0.5 + eps)
    soft_iou = 0.5 * (0.5 + eps) / (1.0 + eps) + 0.5 * (0 + eps) / (0.5 + eps)
    expected = 3 - recall - precision - soft_iou
    got = JetLoss(num_classes=2, eps=eps)(logits, target)
    assert float(got) == pytest.approx(expected, abs=1e-6)


def test_perfect_prediction_is_zero():
    _, target = random_inputs(0, classes=5)
    labels = target.masked_fill(target == VOID, 0)
    logits = confident_logits(labels, 5)
    loss = JetLoss(torch.tensor([0.1, 0.2, 0.3, 0.2, 0.2]))
    assert float(loss(logits, target)) == pytest.approx(0.0, abs=1e-6)


def test_confidently_wrong_prediction_is_near_three():
    _, target = random_inputs(1, classes=4, void_share=0.0)
    logits = confident_logits((target + 1) % 4, 4)
    value = float(JetLoss(num_classes=4)(logits, target))
    assert value > 2.9
    assert value <= 3.0


@pytest.mark.parametrize("seed", range(5))
def test_random_inputs_give_finite_loss_in_range(seed):
    classes = 3 + seed
    logits, target = random_inputs(seed, classes=classes, scale=0.5 + 3 * seed)
    weights = torch.rand(classes, generator=torch.Generator().manual_seed(seed)) + 0.1
    loss = JetLoss(weights)
    value = loss(logits, target)
    assert value.dtype == torch.float32 and value.dim() == 0
    assert torch.isfinite(value)
    assert 0.0 <= value.item() <= 3.0
    terms = loss.terms(logits, target)
    for name in ("recall", "precision", "soft_iou"):
        assert 0.0 <= float(terms[name]) <= 1.0
    assert float(terms["loss"]) == pytest.approx(value.item(), abs=1e-6)


def test_uniform_weights_by_default():
    logits, target = random_inputs(3, classes=4)
    uniform = JetLoss(num_classes=4)(logits, target)
    explicit = JetLoss([7.0, 7.0, 7.0, 7.0])(logits, target)  # normalised to sum 1
    assert torch.allclose(uniform, explicit)
    assert torch.allclose(JetLoss(num_classes=4).class_weights, torch.full((4,), 0.25))


def test_absent_class_neither_rewards_nor_penalises():
    # classes 0 and 1 only in target and prediction; a third class absent from both must not
    # change the loss when its weight is shared out by renormalisation.
    p0 = torch.tensor([0.8, 0.3, 0.6, 0.1])
    logits2 = torch.stack([p0.log(), (1 - p0).log()]).reshape(1, 2, 2, 2)
    logits3 = torch.cat([logits2, torch.full((1, 1, 2, 2), -80.0)], dim=1)
    target = torch.tensor([[[0, 1], [0, 1]]])
    two = JetLoss([0.5, 0.5])(logits2, target)
    # the absent class scores 1 in each term, so with weight w it adds w * 0 to each 1 - score
    three = JetLoss([0.25, 0.25, 0.5])(logits3, target)
    assert float(three) == pytest.approx(float(two) / 2, abs=1e-5)


# ---------------------------------------------------------------- void and gradients


def test_void_pixels_are_ignored_entirely():
    logits, target = random_inputs(4, classes=4, void_share=0.3)
    void = target == VOID
    assert void.any()
    changed = logits.clone()
    changed[void.unsqueeze(1).expand_as(changed)] = 1e3 * torch.randn(int(void.sum()) * 4)
    for loss in (JetLoss(num_classes=4), CrossEntropy(num_classes=4), JetLossCE(num_classes=4)):
        leaf = logits.clone().requires_grad_(True)
        value = loss(leaf, target)
        value.backward()
        assert float(loss(changed, target)) == pytest.approx(value.item(), abs=1e-6)
        void_grad = leaf.grad.permute(0, 2, 3, 1)[void]  # (B, C, H, W) -> (N_void, C)
        assert torch.count_nonzero(void_grad) == 0
        assert torch.count_nonzero(leaf.grad.permute(0, 2, 3, 1)[~void]) > 0


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_only_void_batch_gives_connected_zero(name):
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), VOID)
    loss = build_loss(name, torch.tensor([0.2, 0.3, 0.5]), 3)
    value = loss(logits, target)
    assert value.item() == 0.0
    assert value.requires_grad
    value.backward()
    assert torch.count_nonzero(logits.grad) == 0


def test_gradient_matches_finite_differences():
    logits, target = random_inputs(6, batch=1, classes=3, height=3, width=3, scale=1.0)
    logits = logits.double().requires_grad_(True)
    loss = JetLoss([0.2, 0.5, 0.3], eps=1e-3)
    assert loss(logits, target).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda x: loss(x, target), (logits,))


def test_sgd_steps_on_free_logits_lower_the_loss():
    logits, target = random_inputs(7, batch=2, classes=4, height=4, width=4, scale=0.1)
    free = torch.nn.Parameter(logits)
    loss = JetLoss(num_classes=4)
    optimizer = torch.optim.SGD([free], lr=20.0)
    values = []
    for _ in range(10):
        optimizer.zero_grad()
        value = loss(free, target)
        value.backward()
        optimizer.step()
        values.append(value.item())
    assert all(later < earlier for earlier, later in zip(values, values[1:], strict=False))
    assert values[-1] < 0.5 * values[0]


# ---------------------------------------------------------------- precision and autocast


def test_autocast_bfloat16_returns_float32():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, kernel_size=3, padding=1)
    images = torch.randn(2, 3, 6, 6)
    _, target = random_inputs(8, classes=4, height=6, width=6)
    loss = JetLoss(num_classes=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(images)
        assert logits.dtype == torch.bfloat16
        value = loss(logits, target)
        others = [build_loss(name, None, 4)(logits, target) for name in ("ce", "jetloss+ce")]
    for result in [value, *others]:
        assert result.dtype == torch.float32
        assert torch.isfinite(result)
    reference = loss(logits.float(), target)
    assert value.item() == pytest.approx(reference.item(), abs=1e-6)
    value.backward()
    assert torch.isfinite(conv.weight.grad).all()


# ---------------------------------------------------------------- Cui weights


def test_cui_weights_match_closed_form():
    beta = 0.9
    # (1 - beta) / (1 - beta**n) for n = 1, 2, 10, by hand:
    raw = [0.1 / 0.1, 0.1 / (1 - 0.81), 0.1 / (1 - 0.3486784401)]
    expected = [value / sum(raw) for value in raw]
    got = cui_class_weights([1, 2, 10], beta=beta)
    assert got.dtype == torch.float32
    assert got.tolist() == pytest.approx(expected, rel=1e-6)
    assert float(got.sum()) == pytest.approx(1.0, abs=1e-6)


def test_cui_weights_for_camvid_sized_counts():
    # Millions of pixels: beta**n underflows, weights saturate at (1 - beta) and stay finite.
    counts = torch.tensor([30_000_000, 1_000_000, 5_000, 500])
    got = cui_class_weights(counts, beta=0.999)
    assert torch.isfinite(got).all()
    raw = [0.001, 0.001, 0.001 / (1 - 0.999**5_000), 0.001 / (1 - 0.999**500)]
    assert got.tolist() == pytest.approx([value / sum(raw) for value in raw], rel=1e-6)
    assert got[3] > got[2] > got[1]


def test_cui_weights_beta_close_to_one_approaches_inverse_frequency():
    got = cui_class_weights([10, 20, 40], beta=1 - 1e-12)
    expected = [1 / 10, 1 / 20, 1 / 40]
    assert got.tolist() == pytest.approx([v / sum(expected) for v in expected], rel=1e-5)


def test_cui_weights_beta_zero_is_uniform_over_present_classes():
    with pytest.warns(UserWarning, match=r"\[1\]"):
        got = cui_class_weights([5, 0, 1_000_000], beta=0.0)
    assert got.tolist() == pytest.approx([0.5, 0.0, 0.5])


def test_cui_weights_zero_count_class_gets_zero_weight_and_warning():
    with pytest.warns(UserWarning, match=r"classes \[0, 2\] have 0 pixels"):
        got = cui_class_weights([0, 100, 0, 3])
    assert got[0] == 0.0 and got[2] == 0.0
    assert float(got.sum()) == pytest.approx(1.0)
    assert got[3] > got[1] > 0


@pytest.mark.parametrize(
    ("counts", "beta", "message"),
    [
        ([1, 2], 1.0, r"beta must be a number in \[0, 1\)"),
        ([1, 2], -0.1, r"beta must be a number in \[0, 1\)"),
        ([1, -2], 0.9, "finite and >= 0"),
        ([0, 0], 0.9, "all 0"),
        ([], 0.9, "non-empty 1-D"),
        ([[1, 2]], 0.9, "non-empty 1-D"),
    ],
)
def test_cui_weights_reject_bad_input(counts, beta, message):
    with pytest.raises(ValueError, match=message):
        cui_class_weights(counts, beta=beta)


# ---------------------------------------------------------------- baselines and build_loss


def test_cross_entropy_equals_torch_with_ignore_index():
    logits, target = random_inputs(9, classes=4)
    expected = F.cross_entropy(logits, target, ignore_index=VOID)
    assert torch.allclose(CrossEntropy(num_classes=4)(logits, target), expected)


def test_weighted_cross_entropy_uses_mean_one_weights():
    logits, target = random_inputs(10, classes=4)
    weights = torch.tensor([0.1, 0.2, 0.3, 0.4])
    loss = CrossEntropy(weights)
    assert torch.allclose(loss.class_weights.mean(), torch.tensor(1.0))
    expected = F.cross_entropy(logits, target, weight=weights / weights.mean(), ignore_index=VOID)
    assert torch.allclose(loss(logits, target), expected)
    assert not torch.allclose(loss(logits, target), CrossEntropy(num_classes=4)(logits, target))


def test_jetloss_plus_ce_is_the_weighted_sum():
    logits, target = random_inputs(11, classes=4)
    weights = torch.tensor([0.4, 0.3, 0.2, 0.1])
    combined = JetLossCE(weights, ce_weight=0.5)
    expected = JetLoss(weights)(logits, target) + 0.5 * F.cross_entropy(
        logits, target, ignore_index=VOID
    )
    assert torch.allclose(combined(logits, target), expected)
    terms = combined.terms(logits, target)
    assert torch.allclose(terms["loss"], expected)
    assert set(terms) >= {"recall", "precision", "soft_iou", "jetloss", "ce", "loss"}


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_every_loss_name_builds_and_backprops(name):
    weights = cui_class_weights([500, 40, 3000, 7])
    loss = build_loss(name, weights, num_classes=4)
    assert isinstance(loss, torch.nn.Module)
    logits, target = random_inputs(12, classes=4)
    logits.requires_grad_(True)
    value = loss(logits, target)
    assert value.dim() == 0 and torch.isfinite(value) and value.item() > 0
    value.backward()
    assert torch.isfinite(logits.grad).all()
    assert torch.count_nonzero(logits.grad) > 0


def test_build_loss_rejects_unknown_names_and_missing_weights():
    with pytest.raises(ValueError, match="jetloss, ce, wce, jetloss\\+ce"):
        build_loss("dice", None, 4)
    with pytest.raises(ValueError, match="needs class_weights"):
        build_loss("wce", None, 4)
    assert isinstance(build_loss("jetloss", None, 4), JetLoss)
    assert isinstance(build_loss("wce", torch.ones(4), 4), CrossEntropy)


def test_constructor_and_input_validation():
    with pytest.raises(ValueError, match="class_weights has 3 entries but num_classes=4"):
        JetLoss([1.0, 1.0, 1.0], num_classes=4)
    with pytest.raises(ValueError, match="give class_weights or num_classes"):
        JetLoss()
    with pytest.raises(ValueError, match="eps must be a number > 0"):
        JetLoss(num_classes=2, eps=0.0)
    with pytest.raises(ValueError, match="finite and >= 0"):
        CrossEntropy([1.0, math.nan])
    with pytest.raises(ValueError, match="ce_weight"):
        JetLossCE(num_classes=2, ce_weight=-1.0)
    loss = JetLoss(num_classes=3)
    with pytest.raises(ValueError, match="expected num_classes=3"):
        loss(torch.randn(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"target must be \(B, H, W\)"):
        loss(torch.randn(1, 3, 2, 2), torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels \[5\] outside \[0, 3\)"):
        loss(torch.randn(1, 3, 1, 2), torch.tensor([[[5, VOID]]]))
