"""The README's quick start runs ``studies/local.yaml``: its first rung must visibly learn.

A network that predicts one class everywhere scores about 2% mIoU on the synthetic scenes (one
class's IoU over 11 classes), and no guess beats 1/11 (9%); the local study's rung-0 recipe
trains the tiny space's networks to 24-30% in about a second of CPU each.
"""

from __future__ import annotations

import torch

from jetsearch.objective import load_data
from jetsearch.space import load_space
from jetsearch.spec import load_study_spec
from jetseg.model import build_model
from jetseg.train import Trainer

LEARNS_ABOVE = 0.2  # more than twice the best guess


def test_the_local_study_first_rung_trains_a_network_well_above_chance():
    spec = load_study_spec("local")
    assert spec.space == "tiny" and spec.data is None  # the quick start's synthetic scenes
    data = load_data(spec, rung=0)
    config = load_space(spec.space).random_configs(1, seed=spec.seed)[0]
    torch.manual_seed(spec.seed)  # as trial 0 of the study starts
    budget = spec.rung_budget(0)
    trainer = Trainer(
        build_model(config),
        data.train,
        data.val,
        budget.train_config(seed=spec.seed),
        out_dir=None,
        class_weights=data.class_weights,
    )
    result = trainer.fit(resume=False)
    assert result.best_miou > LEARNS_ABOVE, (result.best_miou, result.per_class_iou)
    # More than the largest class: at least five classes are found.
    assert sum(iou > 0.1 for iou in result.per_class_iou) >= 5, result.per_class_iou
