"""Training checkpoints: the format, the atomic save, loading, and what makes a resume exact.

A checkpoint is one ``torch.save`` of a dict of plain data and tensors, so that it loads with
``weights_only=True`` (no pickled code runs on load). :func:`checkpoint_state` writes it from a
:class:`~jetseg.train.Trainer`, :func:`restore_trainer` puts it back::

    format          CHECKPOINT_FORMAT, checked on every read
    model           the network's state_dict; config + arch_hash rebuild it (load_checkpoint)
    optimizer, scheduler, scaler    their state_dicts
    epoch, step, train_time_s, images_seen      where the run stands
    rng             Python, NumPy, torch, CUDA and the shuffling generator (rng_state)
    best_miou, best_epoch, best_metrics, history, stopped_reason, stop_detail
    train_config    the TrainConfig as plain data
    data, num_classes, class_names, ignore_index, device, torch_version

Example::

    >>> model, config, state = load_checkpoint("runs/nano/best.pt")   # eval mode, on the CPU
    >>> state["epoch"], state["train_config"]["size"]

A resume must continue the very run that was saved: :func:`restore_trainer` refuses a checkpoint
of another network and warns when the TrainConfig changed in a key outside
:data:`RESUMABLE_CHANGES`.
"""

from __future__ import annotations

import math
import random
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from jetseg.config import JetSegConfig, arch_hash, config_to_dict, load_config
from jetseg.fileio import atomic_write_bytes
from jetseg.metrics import SegMetrics
from jetseg.train_config import resolve_device

if TYPE_CHECKING:
    from jetseg.train import Trainer

__all__ = [
    "CHECKPOINT_FORMAT",
    "RESUMABLE_CHANGES",
    "checkpoint_input_size",
    "checkpoint_state",
    "load_checkpoint",
    "read_checkpoint",
    "restore_rng_state",
    "restore_trainer",
    "rng_state",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "jetseg-checkpoint-v1"
# TrainConfig keys that may change when a run is resumed without breaking it.
RESUMABLE_CHANGES = frozenset(
    {
        "epochs",
        "time_budget_s",
        "device",
        "num_workers",
        "eval_every",
        "overlays",
        "export_onnx",
        "progress",
    }
)


# ---------------------------------------------------------------------------------------------
# random streams


def rng_state(loader_generator: torch.Generator) -> dict[str, Any]:
    """Every random stream the run draws from, as tensors and plain data (weights_only-safe)."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "loader": loader_generator.get_state(),
    }


def restore_rng_state(state: dict[str, Any], loader_generator: torch.Generator) -> None:
    """Put back what :func:`rng_state` captured: the next draws equal those after the capture."""
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
    loader_generator.set_state(state["loader"])


# ---------------------------------------------------------------------------------------------
# the format, written and read


def checkpoint_state(trainer: Trainer) -> dict[str, Any]:
    """Everything a checkpoint of ``trainer`` holds (plain data and tensors, see the module)."""
    config = trainer.config
    return {
        "format": CHECKPOINT_FORMAT,
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.schedule.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "epoch": trainer.epoch,
        "step": trainer.global_step,
        "train_time_s": trainer.train_time_s,
        "images_seen": trainer.images_seen,
        "rng": rng_state(trainer.loader_generator),
        "best_miou": trainer.best_miou,
        "best_epoch": trainer.best_epoch,
        "best_metrics": None if trainer.best_metrics is None else trainer.best_metrics.to_dict(),
        "best_heldout": None if trainer.best_heldout is None else trainer.best_heldout.to_dict(),
        "history": trainer.history,
        "stopped_reason": trainer.stopped_reason,
        "stop_detail": trainer.stop_detail,
        "config": None if config is None else config_to_dict(config),
        "arch_hash": None if config is None else arch_hash(config),
        "train_config": trainer.cfg.to_dict(),
        "data": {"description": trainer.data_description, "synthetic": trainer.synthetic_data},
        "num_classes": trainer.num_classes,
        "class_names": None if trainer.class_names is None else list(trainer.class_names),
        "ignore_index": trainer.ignore_index,
        "device": str(trainer.device),
        "torch_version": str(torch.__version__),
    }


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """``torch.save`` ``state`` to ``path`` atomically: an interrupt keeps the previous file."""
    return atomic_write_bytes(path, lambda handle: torch.save(state, handle))


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw dict of a checkpoint file, checked to be one.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is truncated, not a torch file, or not a JetSeg checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    # torch.save writes a zip archive; anything else (a text file, a truncated download) would
    # only get torch's unpickler's error, e.g. a bare "101", which names neither file nor cause.
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"cannot read checkpoint {path}: not a jetseg checkpoint (not a torch zip archive; "
            "a truncated file reads so too)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for foreign or damaged archives
        raise ValueError(
            f"cannot read checkpoint {path}: not a jetseg checkpoint (a zip archive torch "
            f"cannot load: {type(err).__name__}: {err})"
        ) from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not a JetSeg training checkpoint (expected format {CHECKPOINT_FORMAT!r})"
        )
    return state


def load_checkpoint(
    path: str | Path, device: str = "cpu"
) -> tuple[nn.Module, JetSegConfig, dict[str, Any]]:
    """Rebuild the network of a checkpoint: ``(model in eval mode, its config, the raw dict)``.

    The raw dict holds everything the module docstring lists (epoch, history,
    ``train_config``, ``data``...). ``device`` is ``"auto"`` or a torch device name.
    """
    from jetseg.model import build_model

    state = read_checkpoint(path)
    if state.get("config") is None:
        raise ValueError(f"{path} holds no network config; it cannot be rebuilt")
    config = load_config(state["config"])
    model = build_model(config)
    model.load_state_dict(state["model"])
    model = model.to(resolve_device(device)).eval()
    return model, config, state


def checkpoint_input_size(
    state: dict[str, Any], size: tuple[int, int] | None
) -> tuple[int, int] | None:
    """``size`` if given, else the size the checkpoint was trained at (``None``: the data's)."""
    if size is not None:
        return tuple(size)
    trained = state.get("train_config", {}).get("size")
    return None if trained is None else tuple(trained)


def metrics_from_dict(data: dict[str, Any]) -> SegMetrics:
    """The :class:`SegMetrics` that ``SegMetrics.to_dict`` stored (``None`` back to NaN)."""

    def number(value: float | None) -> float:
        return math.nan if value is None else float(value)

    names = data.get("class_names")
    return SegMetrics(
        per_class_iou=tuple(number(v) for v in data["per_class_iou"]),
        miou=number(data["miou"]),
        pixel_accuracy=number(data["pixel_accuracy"]),
        class_names=None if names is None else tuple(names),
    )


# ---------------------------------------------------------------------------------------------
# resuming


def check_resumable(
    state: dict[str, Any], config: JetSegConfig | None, train_config: dict[str, Any], path: Path
) -> None:
    """Refuse a checkpoint of another network; warn when the recipe changed in a way that
    makes the resumed run differ from an uninterrupted one."""
    if config is not None and state.get("config") is not None:
        saved_hash = arch_hash(load_config(state["config"]))
        if saved_hash != arch_hash(config):
            raise ValueError(
                f"{path} was trained with another network (arch_hash {saved_hash}, this one "
                f"is {arch_hash(config)}); start over with resume=False (--restart) "
                f"or use another output directory"
            )
    changed = sorted(
        key
        for key, value in state["train_config"].items()
        if key not in RESUMABLE_CHANGES and train_config.get(key) != value
    )
    if changed:
        warnings.warn(
            f"resuming {path} with a different TrainConfig ({', '.join(changed)}); the run "
            f"will not match an uninterrupted one",
            UserWarning,
            stacklevel=5,  # check_resumable < restore_trainer < Trainer._restore < fit
        )


def restore_trainer(trainer: Trainer, state: dict[str, Any], path: Path) -> None:
    """Put ``trainer`` back where the checkpoint ``state`` (read from ``path``) left it.

    Model, optimizer, schedule, scaler, counters, the best epoch, the history and every random
    stream: the run then goes on exactly as an uninterrupted one would. Raises ``ValueError``
    for a checkpoint of another network (see :func:`check_resumable`).
    """
    check_resumable(state, trainer.config, trainer.cfg.to_dict(), path)
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.schedule.load_state_dict(state["scheduler"])
    if state["scaler"]:
        trainer.scaler.load_state_dict(state["scaler"])
    trainer.epoch = int(state["epoch"])
    trainer.global_step = int(state["step"])
    trainer.train_time_s = float(state["train_time_s"])
    trainer.images_seen = int(state["images_seen"])
    trainer.best_miou = float(state["best_miou"])
    trainer.best_epoch = int(state["best_epoch"])
    best = state.get("best_metrics")
    trainer.best_metrics = None if best is None else metrics_from_dict(best)
    held = state.get("best_heldout")  # absent in checkpoints of older versions
    trainer.best_heldout = None if held is None else metrics_from_dict(held)
    trainer.history = list(state["history"])
    restore_rng_state(state["rng"], trainer.loader_generator)
