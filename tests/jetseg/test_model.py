"""Every preset and every edge config: shapes, gradients, determinism, ONNX parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from jetseg_cases import ALL_CONFIGS, get_config, randomize_bn

from jetseg.export import check_parity, check_standard_ops, export_onnx
from jetseg.model import build_model

SIZES = [(360, 480), (250, 333)]


@pytest.fixture(scope="module", params=ALL_CONFIGS)
def built(request):
    torch.manual_seed(0)
    config = get_config(request.param)
    model = build_model(config)
    randomize_bn(model)
    return request.param, config, model


def test_forward_returns_input_size_logits(built):
    name, config, model = built
    model.eval()
    with torch.no_grad():
        for h, w in SIZES:
            out = model(torch.randn(1, 3, h, w))
            assert out.shape == (1, config.num_classes, h, w), (name, h, w)
            assert torch.isfinite(out).all()


def test_backward_reaches_every_parameter(built):
    name, _, model = built
    model.train()
    model.zero_grad(set_to_none=True)
    x = torch.randn(2, 3, 64, 96)
    out = model(x)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    dead = [
        n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() == 0
    ]
    assert not missing, f"{name}: parameters without a gradient: {missing}"
    assert not dead, f"{name}: parameters with an all-zero gradient: {dead}"


def test_eval_output_is_deterministic(built):
    _, _, model = built
    model.eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        a = model(x)
        b = model(x)
    assert torch.equal(a, b)


def test_onnx_matches_pytorch_at_two_sizes_through_one_file(built, tmp_path):
    name, _, model = built
    model.eval()
    path = tmp_path / f"{name}.onnx"
    export_onnx(model, path, input_size=(64, 96))
    ops = check_standard_ops(path)
    assert ops.get("Conv", 0) > 0
    diffs = check_parity(model, path, sizes=[(96, 128), (75, 101)], batch=2, atol=1e-4)
    assert max(diffs.values()) <= 1e-4
    # The outputs really vary over the image, so the comparison is not between constants.
    with torch.no_grad():
        out = model(torch.randn(1, 3, 96, 128))
    assert float(out.std()) > 1e-3


def test_feature_info_matches_real_features():
    model = build_model(get_config("dilated_s3")).eval()
    with torch.no_grad():
        feats = model.encoder(torch.randn(1, 3, 128, 192))
    for info, feat in zip(model.encoder.feature_info, feats, strict=True):
        assert feat.shape[1] == info.channels
        assert feat.shape[2] == int(np.ceil(128 / info.stride))
    # The dilated last stage keeps stride 8 instead of going to 16.
    assert [i.stride for i in model.encoder.feature_info] == [2, 4, 8, 8]


def test_input_of_wrong_rank_is_refused_with_the_shape():
    model = build_model(get_config("one_branch"))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\).*\(3, 64, 64\)"):
        model(torch.randn(3, 64, 64))
