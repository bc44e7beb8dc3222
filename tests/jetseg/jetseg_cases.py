from __future__ import annotations

import torch

from jetseg.config import JetSegConfig, load_config

PRESETS = ("nano", "agx", "workstation")

# The smallest sensible network: for training tests that must run in a second or two.
TINY_CONFIG = {
    "name": "tiny",
    "stem": {"width": 8},
    "stages": [
        {"depth": 1, "width": 8, "attention": "cbam"},
        {"depth": 1, "width": 16, "attention": "sam"},
        {"depth": 1, "width": 16, "attention": "eca"},
    ],
    "decoder": {"low_width": 8, "head_width": 8, "fuse_width": 8, "out_width": 8},
}


def _small(**over) -> dict:
    """A small config as a mapping, to which edge-case tests apply their one change."""
    base = {
        "stem": {"width": 8},
        "stages": [
            {"depth": 1, "width": 16, "attention": "cbam"},
            {"depth": 1, "width": 24, "attention": "sam"},
            {"depth": 2, "width": 32, "attention": "eca"},
        ],
        "decoder": {"low_width": 8, "head_width": 16, "fuse_width": 16, "out_width": 16},
    }
    base.update(over)
    return base


def _branches(*specs: tuple[int, int, int]) -> dict:
    return {"branches": [{"kernel": k, "dilation": d, "square_kernel": q} for k, d, q in specs]}


def _stage(**over) -> dict:
    s = {"depth": 1, "width": 16}
    s.update(over)
    return s


EDGE_CONFIGS: dict[str, dict] = {
    "one_branch": _small(
        stages=[_stage(jetconv=_branches((3, 1, 3))), _stage(width=24), _stage(width=32)]
    ),
    "three_branches": _small(
        stages=[
            _stage(jetconv=_branches((3, 1, 3), (5, 2, 5), (7, 3, 7))),
            _stage(width=24, jetconv=_branches((7, 1, 3), (5, 1, 5), (3, 1, 7))),
            _stage(width=32),
        ]
    ),
    "attention_none_cbam_sam_eca": _small(
        stages=[
            _stage(attention="none"),
            _stage(width=24, attention="cbam", attention_reduction=2),
            _stage(width=32, depth=2, attention="sam"),
        ],
        stem={"width": 8, "kind": "conv3x3"},
    ),
    "activations_a": _small(
        stem={"width": 8, "activation": "tanhexp"},
        stages=[
            _stage(activation="reu"),
            _stage(width=24, activation="tanhexp", attention="eca"),
            _stage(width=32, activation="relu"),
        ],
        decoder={"activation": "hardswish", "low_width": 8, "head_width": 16},
    ),
    "activations_b": _small(
        stem={"width": 8, "activation": "silu"},
        stages=[
            _stage(activation="hardswish"),
            _stage(width=24, activation="silu"),
            _stage(width=32),
        ],
    ),
    "explicit_groups": _small(
        stem={"width": 8, "jetconv": {"groups": 1, **_branches((3, 1, 3), (5, 1, 3))}},
        stages=[
            _stage(groups=1, jetconv={"groups": 2, **_branches((3, 1, 3))}),
            _stage(width=24, groups=4, jetconv={"groups": 8, **_branches((3, 1, 3))}),
            _stage(width=32, groups=8, expansion=3),
        ],
    ),
    "dilated_s3": _small(
        stages=[
            _stage(),
            _stage(width=24),
            _stage(
                width=32,
                depth=3,
                stride=1,
                dilations=[1, 2, 4],
                jetconv=_branches((3, 1, 3), (3, 2, 3)),
            ),
        ],
    ),
    "separable_decoder_taps": _small(
        decoder={"taps": [0, 1, 3], "separable": True, "low_width": 4, "head_width": 8},
    ),
}


def edge_config(name: str) -> JetSegConfig:
    return load_config({"name": name, **EDGE_CONFIGS[name]})


ALL_CONFIGS = (*PRESETS, *EDGE_CONFIGS)


def get_config(name: str) -> JetSegConfig:
    return load_config(name) if name in PRESETS else edge_config(name)


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial batch-norm statistics so eval-mode outputs are not near-constant."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


__all__ = [
    "TINY_CONFIG",
    "ALL_CONFIGS",
    "EDGE_CONFIGS",
    "PRESETS",
    "JetSegConfig",
    "get_config",
    "randomize_bn",
]
