"""One whole training run: :func:`run_training` and the run directory it leaves behind.

    >>> from jetseg.config import load_config
    >>> result = run_training(load_config("nano"), data="../shared/camvid",
    ...                       out_dir=Path("runs/nano"), train_cfg=TrainConfig(epochs=50))
    >>> print(result.headline())  # best val mIoU, its epoch, steps, time, why it stopped

:func:`run_training` builds the datasets, the Cui class weights and the model, runs a
:class:`~jetseg.train.Trainer`, and leaves a run directory behind::

    config.yaml         the network (jetseg.config.save_config)
    train_config.yaml   the TrainConfig
    metrics.jsonl       one JSON object per epoch, appended and flushed as the run goes
    last.pt, best.pt    full checkpoints (best by validation mIoU), written atomically
    best.onnx           the best model, exported for onnxruntime / TensorRT
    overlays/           validation frames: image | ground truth | prediction
    run.json            the result, the data, the device

Running the same command again in the same directory resumes from ``last.pt`` (see
:meth:`jetseg.train.Trainer.fit`).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import yaml

from jetseg.checkpoint import read_checkpoint
from jetseg.config import JetSegConfig, arch_hash, save_config
from jetseg.data import build_datasets, build_holdout
from jetseg.fileio import atomic_write_text
from jetseg.loss import cui_class_weights
from jetseg.predict import write_overlays
from jetseg.progress import TrainHooks
from jetseg.results import EpochReport, TrainResult
from jetseg.train import Trainer, class_pixel_counts, first_frames, seed_everything
from jetseg.train_config import TrainConfig

__all__ = ["run_training"]


def run_training(
    config: JetSegConfig,
    data: str | Path | None,
    out_dir: Path,
    train_cfg: TrainConfig,
    resume: bool = True,
    callbacks: Sequence[Callable[[EpochReport], None]] = (),
    hooks: Sequence[TrainHooks] | None = None,
) -> TrainResult:
    """Train ``config`` on ``data`` and leave a complete run directory in ``out_dir``.

    ``data`` is a CamVid root, or ``None`` for the embedded synthetic street scenes: then the
    summary, every ``metrics.jsonl`` line and ``run.json`` say so. The loss is weighted with
    Cui et al.'s class weights from the training split's pixel counts. What is written is
    listed in the module docstring. An existing run in ``out_dir`` is resumed (``resume``).
    Exceptions from callbacks propagate as in :meth:`Trainer.fit`; ``hooks`` are the
    Trainer's (``None``: the display or not, as ``train_cfg.progress`` says).
    """
    from jetseg.export import export_onnx
    from jetseg.model import build_model

    if not isinstance(config, JetSegConfig):
        raise TypeError(f"config must be a JetSegConfig, got {type(config).__name__}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = train_cfg
    synthetic = data is None or str(data) == "synthetic"
    # Frames past the limits are never decoded (CamVid decodes a split when it is opened).
    limits = [n for n in (cfg.max_train_images, cfg.max_val_images) if n is not None]
    limit = max(limits) if len(limits) == 2 and not synthetic else None
    train_set, val_set, info = build_datasets(
        data,
        cfg.size,
        random_scale=cfg.random_scale,
        crop=cfg.crop,
        flip=cfg.flip,
        limit=limit,
        synthetic_images=(cfg.max_train_images or 64, cfg.max_val_images or 16),
        holdout=cfg.holdout,
    )
    heldout_set = build_holdout(data, cfg.holdout, cfg.size) if cfg.holdout else None
    train_set = first_frames(train_set, cfg.max_train_images)
    val_set = first_frames(val_set, cfg.max_val_images)
    counts = class_pixel_counts(train_set, info.num_classes)
    with warnings.catch_warnings():
        # A small training split may lack a class: it then weighs 0, which run.json records.
        warnings.simplefilter("ignore", UserWarning)
        class_weights = cui_class_weights(counts, beta=cfg.cui_beta)

    seed_everything(cfg.seed)  # the initial weights depend on the seed only
    model = build_model(config)
    save_config(config, out_dir / "config.yaml")
    atomic_write_text(out_dir / "train_config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    trainer = Trainer(
        model,
        train_set,
        val_set,
        cfg,
        out_dir,
        class_weights=class_weights,
        callbacks=callbacks,
        data_info=info,
        hooks=hooks,
        heldout_set=heldout_set,
    )
    result = trainer.fit(resume=resume)

    # The deliverables come from the best epoch, on a fresh CPU copy of the network.
    best_model = build_model(config)
    best_model.load_state_dict(read_checkpoint(out_dir / "best.pt")["model"])
    best_model.eval()
    frame_size = tuple(val_set[0][0].shape[-2:])
    files = ["config.yaml", "train_config.yaml", "metrics.jsonl", "best.pt", "last.pt"]
    if cfg.export_onnx:
        export_onnx(best_model, out_dir / "best.onnx", input_size=frame_size)
        files.append("best.onnx")
    overlays = write_overlays(best_model, val_set, out_dir / "overlays", cfg.overlays)
    files += [str(p.relative_to(out_dir)) for p in overlays]
    files.append("run.json")

    run = {
        "result": result.to_dict(),
        "config_name": config.name,
        "arch_hash": arch_hash(config),
        "params": sum(p.numel() for p in best_model.parameters()),
        "synthetic_data": info.synthetic,
        "data": {
            "name": info.name,
            "root": None if info.root is None else str(info.root),
            "description": info.description,
            "train_frames": len(train_set),
            "val_frames": len(val_set),
            "holdout": list(cfg.holdout),
            "heldout_frames": 0 if heldout_set is None else len(heldout_set),
            "frame_size": list(frame_size),
        },
        "class_weights": {
            name: float(w) for name, w in zip(info.class_names, class_weights.tolist(), strict=True)
        },
        "class_pixel_counts": {
            name: int(n) for name, n in zip(info.class_names, counts.tolist(), strict=True)
        },
        "train_config": cfg.to_dict(),
        "device": str(trainer.device),
        "amp": None
        if trainer.autocast_dtype is None
        else str(trainer.autocast_dtype).split(".")[-1],
        "channels_last": trainer.channels_last,
        "torch_version": str(torch.__version__),
        "files": files,
    }
    if info.synthetic:
        run["note"] = (
            "trained and evaluated on synthetic street scenes (procedurally generated, not real "
            "data); pass a CamVid root for real results"
        )
    atomic_write_text(out_dir / "run.json", json.dumps(run, indent=2) + "\n")
    return result
