"""Zero-cost proxies: scores of an untrained network, computed in seconds, that may rank networks
as training would.

The usual ones of the NAS literature (as NASLib's ``zerocost`` predictors compute them), for a
segmentation network here:

* ``params`` and ``macs``: the plain counts, which on dense-prediction benchmarks often rank as
  well as any learned-free score;
* ``synflow`` (Tanaka et al., 2020; Abdelfattah et al., 2021): with every weight replaced by its
  absolute value and an all-ones input, ``sum |theta * d(sum output)/d theta|``, computed in
  float64 so that deep products neither overflow nor vanish;
* ``naswot`` (Mellor et al., 2021): the log-determinant of the kernel of binary activation codes
  of a minibatch (which units are positive at each activation layer's input), high when the
  images are told apart;
* ``grad_norm`` (Abdelfattah et al., 2021): the summed L2 norm of the loss gradient of every
  weight on one minibatch.

Each is ``higher = predicted better``. :func:`zero_cost_scores` computes all of them for one
config; ``benchmarks/proxy_fidelity.py`` scores them against the reference set.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from torch import nn

from jetseg.config import JetSegConfig
from jetseg.layers.activations import ACTIVATION_LAYERS

ZERO_COST_NAMES = ("params", "macs", "synflow", "naswot", "grad_norm")
_ACTIVATIONS = tuple(ACTIVATION_LAYERS.values())


def synflow(model: nn.Module, input_size: tuple[int, int]) -> float:
    """SynFlow of ``model`` (a copy is scored; ``model`` is left as it was)."""
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for param in net.parameters():
            param.abs_()
    net.zero_grad()
    output = net(torch.ones(1, 3, *input_size, dtype=torch.float64))
    output.sum().backward()
    total = 0.0
    for param in net.parameters():
        if param.grad is not None:
            total += float((param * param.grad).detach().abs().sum())
    return total


def naswot(model: nn.Module, images: torch.Tensor) -> float:
    """NASWOT score from the sign pattern at every activation layer's input over ``images``."""
    net = copy.deepcopy(model).eval()
    batch = images.shape[0]
    kernel = torch.zeros(batch, batch, dtype=torch.float64)

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        nonlocal kernel
        codes = (inputs[0].reshape(batch, -1) > 0).double()  # (B, units)
        kernel += codes @ codes.t() + (1.0 - codes) @ (1.0 - codes).t()

    handles = [
        m.register_forward_pre_hook(hook) for m in net.modules() if isinstance(m, _ACTIVATIONS)
    ]
    try:
        with torch.no_grad():
            net(images)
    finally:
        for handle in handles:
            handle.remove()
    sign, logdet = torch.linalg.slogdet(kernel)
    return float(logdet) if float(sign) > 0 else float("-inf")


def grad_norm(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, ignore_index: int
) -> float:
    """Summed L2 norms of the cross-entropy gradient of every weight on one minibatch."""
    net = copy.deepcopy(model).train()
    net.zero_grad()
    logits = net(images)
    loss = nn.functional.cross_entropy(logits, labels, ignore_index=ignore_index)
    loss.backward()
    return float(
        sum(float(p.grad.norm()) for p in net.parameters() if p.grad is not None and p.dim() > 1)
    )


def zero_cost_scores(
    config: JetSegConfig,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int,
    count_size: tuple[int, int] = (360, 480),
    seed: int = 0,
) -> dict[str, Any]:
    """Every zero-cost score of ``config`` (untrained, initialised with ``seed``) and the seconds
    each took. ``images`` (B, 3, H, W) and ``labels`` (B, H, W) are one minibatch."""
    from jetseg.complexity import profile
    from jetseg.model import build_model

    torch.manual_seed(seed)
    model = build_model(config)
    scores: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    counts = profile(model, count_size)
    scores["params"], scores["macs"] = float(counts.params), float(counts.macs)
    seconds["params"] = seconds["macs"] = time.perf_counter() - started
    size = tuple(images.shape[-2:])
    for name, compute in (
        ("synflow", lambda: synflow(model, size)),
        ("naswot", lambda: naswot(model, images)),
        ("grad_norm", lambda: grad_norm(model, images, labels, ignore_index)),
    ):
        started = time.perf_counter()
        scores[name] = compute()
        seconds[name] = time.perf_counter() - started
    return {"scores": scores, "seconds": seconds}
