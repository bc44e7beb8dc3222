"""One trial of a study: sample, count, export, measure, prune or train, store.

One trial samples a JetSeg config from the space, counts it, exports it to ONNX, obtains its
latency on the target (cache, then the providers the spec lists, in order; the provenance is
always stored), sets the latency constraint, rejects an over-budget network **before** any
training (a PRUNED trial whose ``outcome`` reads ``rejected: over budget (...)``, which
``--trials`` does not count: :func:`jetsearch.budget.is_rejected`), and otherwise trains it
for the short budget and returns val mIoU (and latency in pareto mode). Everything a person
needs to judge the trial is stored as user attributes, which optuna-dashboard lists in the
order they were first written: :data:`HEADLINE_KEYS` first, each written as soon as it is
known, then the details (config, per-class IoU, latency samples and device, data), written
when the trial ends. The
bookkeeping of crash recovery stays out of that list (:mod:`jetsearch.recovery` keeps it in the
trial's system attributes).

:class:`Objective` is that trial; :func:`load_data` builds the datasets it trains on, once per
rung and process. The study around it: its spec (:mod:`jetsearch.spec`), storage
(:mod:`jetsearch.storage`) and run loop (:mod:`jetsearch.run`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jetsearch.budget import over_budget
from jetsearch.latency.chain import LatencyChain
from jetseg.config import arch_hash, dump_config
from jetseg.metrics import bootstrap_miou

if TYPE_CHECKING:
    from jetsearch.spec import StudySpec


_NOT_READ = object()


class Rejected(Exception):
    """Raised inside a trial whose network is over the latency budget: it is not trained."""


@dataclass
class _DataBundle:
    train: Any
    val: Any
    info: Any
    class_weights: Any
    heldout: Any = None


def load_data(spec: StudySpec, rung: int = 0) -> _DataBundle:
    """The datasets of one rung (its size, frames and held-out sequences) and class weights."""
    from jetseg.data import build_datasets, build_holdout
    from jetseg.loss import cui_class_weights

    budget = spec.rung_budget(rung)
    train, val, info = build_datasets(
        spec.data,
        tuple(budget.size),
        limit=None,
        synthetic_images=(spec.synthetic.train_images, spec.synthetic.val_images),
        seed=spec.seed,
        holdout=budget.holdout,
    )
    heldout = (
        build_holdout(spec.data, budget.holdout, tuple(budget.size)) if budget.holdout else None
    )
    if budget.train_images is not None or budget.val_images is not None:
        import torch.utils.data as tud

        if budget.train_images is not None:
            train = tud.Subset(train, range(min(len(train), budget.train_images)))
        if budget.val_images is not None:
            val = tud.Subset(val, range(min(len(val), budget.val_images)))
    base = train.dataset if hasattr(train, "dataset") else train
    weights = cui_class_weights(base.class_pixel_counts())
    return _DataBundle(train, val, info, weights, heldout)


class _TrialPhases:
    """Training hooks that keep a StudyProgress at the running trial's epoch and phase."""

    def __init__(self, progress: Any, epochs: int) -> None:
        self.progress, self.epochs = progress, epochs

    def on_fit_start(self, trainer) -> None: ...

    def on_epoch_start(self, trainer, epoch: int) -> None:
        self.progress.set_phase("training", epoch=epoch, epochs=self.epochs)

    def on_step(self, trainer, step: int, loss: float, images_per_s: float) -> None: ...

    def on_validate(self, trainer, epoch: int) -> None:
        self.progress.set_phase("validating", epoch=epoch, epochs=self.epochs)

    def on_epoch_end(self, trainer, record: dict[str, Any]) -> None:
        if record.get("val_miou") is not None:
            self.progress.set_miou(record["val_miou"])

    def on_fit_end(self, trainer) -> None: ...

    def on_interrupt(self, trainer, message: str) -> None: ...


class Objective:
    """One trial of a study (see the module docstring for the steps).

    ``rung`` says which recipe the trial trains with (:meth:`StudySpec.rung_budget`); a trial
    above rung 0 trains a promoted network (:mod:`jetsearch.rungs`). ``budget_ms`` is the
    study's latency budget as resolved when it started (:func:`jetsearch.spec.study_budget`;
    None: no budget), never read from the spec, which may state it relative to a preset.
    ``progress`` (a :class:`jetsearch.progress.StudyProgress`) hears the trial's phases;
    ``artifacts`` (an Optuna artifact store) receives each trial's config, ONNX, latency record
    and overlays. With ``heartbeat_s`` each trial runs inside a
    :class:`jetsearch.recovery.TrialHeartbeat` beating every ``heartbeat_s`` seconds by
    ``heartbeat_clock`` (the storage's: :func:`jetsearch.storage.heartbeat_clock`).
    """

    def __init__(
        self,
        spec: StudySpec,
        space,
        latency: LatencyChain,
        data: _DataBundle,
        *,
        budget_ms: float | None,
        rung: int = 0,
        progress: Any = None,
        artifacts: Any = None,
        heartbeat_s: float | None = None,
        heartbeat_clock: Callable[[], float] | None = None,
    ) -> None:
        self.budget_ms = budget_ms
        self.heartbeat_s = heartbeat_s
        self.heartbeat_clock = heartbeat_clock
        self.spec = spec
        self.space = space
        self.latency = latency
        self.data = data
        self.rung = rung
        self.progress = progress
        self.artifacts = artifacts
        self._seed_sd: Any = _NOT_READ  # the rung recipe's seed spread on the scoreboard

    def _phase(self, phase: str) -> None:
        if self.progress is not None:
            self.progress.set_phase(phase)

    def __call__(self, trial):
        import optuna

        from jetsearch.recovery import INTERRUPTED, TrialHeartbeat, failure_attrs

        details: dict[str, Any] = {}  # written after the headline, when the trial ends
        if self.progress is not None:
            self.progress.start_trial(trial.number, self.rung)
        try:
            if self.heartbeat_s is None:
                value = self._run(trial, details)
            else:
                # Owner record and heartbeat: a process killed mid-trial leaves a trial that the
                # next process can prove dead, fail and run again (jetsearch.recovery).
                with TrialHeartbeat(trial, interval_s=self.heartbeat_s, clock=self.heartbeat_clock):
                    value = self._run(trial, details)
        except Rejected as rejected:
            _write(trial, {"outcome": f"rejected: {rejected}", **details})
            raise optuna.TrialPruned(str(rejected)) from None
        except optuna.TrialPruned as pruned:
            reason = trial.user_attrs.get("pruned_reason") or str(pruned) or "pruned"
            _write(trial, {"outcome": f"pruned: {reason}", **details})
            raise
        except KeyboardInterrupt:
            _write(trial, {**failure_attrs(INTERRUPTED), **details})
            raise
        except Exception as err:
            reason = trial.user_attrs.get("failure_reason") or f"{type(err).__name__}: {err}"
            _write(trial, {**failure_attrs(reason), **details})
            raise
        finally:
            if self.progress is not None:
                self.progress.end_trial()
        _write(trial, {"outcome": "completed", **details})
        return value

    def _run(self, trial, details: dict[str, Any]):
        """The trial's work; the headline attributes are written on ``trial`` as they become
        known, the details are collected in ``details``."""
        import optuna
        import torch

        from jetseg.complexity import profile
        from jetseg.export import export_onnx
        from jetseg.model import build_model

        # The outcome comes first among the user attributes, so the dashboard shows it on top;
        # it reads "running" until the trial ends (recovery rewrites it for a trial whose
        # process died). It is written after the owner record (TrialHeartbeat), so a process
        # killed between the two leaves a trial its successor can prove dead at once.
        trial.set_user_attr("outcome", "running")
        spec = self.spec
        if self.rung > 0 and "promoted_from_trial" not in trial.user_attrs:
            # Another process took the promotion this one meant to train.
            trial.set_user_attr("pruned_reason", "no promoted network was waiting at this rung")
            raise optuna.TrialPruned("no promoted network was waiting")
        config = self.space.sample(trial)
        digest = arch_hash(config)
        queued_as = trial.user_attrs.get("arch_hash")
        if queued_as is not None and queued_as != digest:
            # A promotion or retry must train the network it names, never a neighbour of it.
            raise RuntimeError(
                f"trial {trial.number} was queued as network {queued_as} but its parameters "
                f"build network {digest} (was the space file changed since it was queued?)"
            )
        # arch_hash right after sampling: recovery queues a dead trial's network again only
        # once it is whole (jetsearch.recovery.network_params).
        _write(trial, {"rung": self.rung, "arch_hash": digest})
        details.update(
            config_yaml=dump_config(config),
            data=self.data.info.description,
            synthetic_data=bool(self.data.info.synthetic),
        )

        duplicate = _find_completed(trial.study, digest, exclude=trial.number)
        if duplicate is not None:
            wanted = {*DUPLICATE_KEYS, *LEGACY_KEYS}
            copied = {k: v for k, v in duplicate.user_attrs.items() if k in wanted}
            _write(trial, {k: copied.pop(k) for k in HEADLINE_KEYS if k in copied})
            trial.set_user_attr("duplicate_of", duplicate.number)
            details.update(copied, train_time_s=0.0)
            for key, value in (duplicate.constraints or {}).items():
                trial.set_constraint(key, value)
            return duplicate.values if len(duplicate.values) > 1 else duplicate.values[0]

        # The initial weights depend on the trial's training seed only (as in run_training), not
        # on what this process ran before: repeated, resumed and parallel studies, and two
        # samplers compared trial by trial, then train an architecture from the same start.
        torch.manual_seed(spec.seed + trial.number)
        model = build_model(config)
        h, w = spec.latency.input_size
        report = profile(model, (h, w))
        _write(trial, {"params": report.params, "macs": report.macs})
        details["paper_flops"] = report.flops
        onnx_bytes = export_onnx(model, input_size=(h, w))

        self._phase("measuring latency")
        result, errors = self.latency.measure(onnx_bytes, config)
        latency_ms = result.median_ms
        budget = self.budget_ms
        measured = latency_attrs(result)
        _write(
            trial,
            {
                "latency_ms": measured.pop("latency_ms"),
                "latency_source": measured.pop("latency_source"),
                "feasible": budget is None or latency_ms <= budget,
            },
        )
        details.update(measured)
        if errors:
            details["latency_fallbacks"] = errors
        details["latency_over_budget_ms"] = (
            0.0 if budget is None else round(max(0.0, latency_ms - budget), 4)
        )
        if budget is not None:
            trial.set_constraint("latency_ms", latency_ms - budget)
            if latency_ms > budget:
                # Rejected, not trained: PRUNED with its latency and constraint, so the sampler
                # learns from it, but not counted towards --trials (jetsearch.run.TrialCount).
                self._upload(trial, config, onnx_bytes, result, None)
                reason = over_budget(latency_ms, budget)
                trial.set_user_attr("pruned_reason", f"rejected: {reason}")
                raise Rejected(reason)

        outcome, trainer = self._train(trial, model)
        trial.set_user_attr("val_miou", outcome.best_miou)
        # The mIoU's uncertainty: a bootstrap over the validation frames of the last epoch
        # (jetsearch.fronts treats mIoU whose intervals overlap as one accuracy).
        if trainer.val_frame_counts is not None:
            trial.set_user_attr("val_miou_sd", self._miou_sd(trainer.val_frame_counts))
        if outcome.heldout_miou is not None:
            trial.set_user_attr("heldout_miou", outcome.heldout_miou)
        details["per_class_iou"] = _iou_mapping(outcome.class_names, outcome.per_class_iou)
        if outcome.heldout_miou is not None:
            details["heldout_per_class_iou"] = _iou_mapping(
                outcome.class_names, outcome.heldout_per_class_iou
            )
        details.update(train_time_s=round(outcome.train_time_s, 2), epochs=outcome.epochs_done)
        self._upload(trial, config, onnx_bytes, result, trainer)
        score = outcome.best_miou if spec.objective == "val" else outcome.heldout_miou
        if spec.mode == "pareto":
            return score, latency_ms
        return score

    def _miou_sd(self, frame_counts) -> float:
        """The bootstrap over the val frames and, where the proxy scoreboard measured this
        rung's recipe with two seeds on real data, one training's seed spread under it."""
        from jetsearch.scoreboard import (
            SCOREBOARD_FILE,
            budget_recipe,
            fidelity_of,
            load_scoreboard,
        )
        from jetsearch.spec import studies_dir

        boot = bootstrap_miou(frame_counts)[0]
        if not self.spec.data:
            return boot  # the scoreboard measured CamVid, not the synthetic scenes
        if self._seed_sd is _NOT_READ:  # read once per rung's objective, not per trial
            board = load_scoreboard(studies_dir() / SCOREBOARD_FILE)
            found = fidelity_of(budget_recipe(self.spec.rung_budget(self.rung)), board)
            self._seed_sd = None if found is None else found.seed_sd_val
        if self._seed_sd is None:
            return boot
        return math.hypot(boot, self._seed_sd)

    def _upload(self, trial, config, onnx_bytes: bytes, result, trainer) -> None:
        """The trial's config, ONNX, latency record and (when trained) an overlay panel."""
        if self.artifacts is None:
            return
        from jetsearch.artifacts import upload_trial_artifacts

        self._phase("uploading artifacts")
        overlay = None if trainer is None else _overlay_png(trainer, self.data.val)
        upload_trial_artifacts(
            trial,
            trial.study,
            self.artifacts,
            config_yaml=dump_config(config),
            onnx_bytes=onnx_bytes,
            overlay_png=overlay,
            latency_record=result.to_dict(),
        )

    def _train(self, trial, model):
        import optuna

        from jetseg.train import Trainer

        spec = self.spec
        cfg = spec.rung_budget(self.rung).train_config(seed=spec.seed + trial.number)
        callbacks: list[Callable] = []
        if spec.mode == "budget":

            def report(epoch_report) -> None:
                trial.report(epoch_report.val.miou, epoch_report.epoch)
                if trial.should_prune():
                    trial.set_user_attr(
                        "pruned_reason", f"pruned after epoch {epoch_report.epoch} by the pruner"
                    )
                    raise optuna.TrialPruned()

            callbacks.append(report)
        hooks = () if self.progress is None else (_TrialPhases(self.progress, cfg.epochs),)
        trainer = Trainer(
            model,
            self.data.train,
            self.data.val,
            cfg,
            out_dir=None,
            class_weights=self.data.class_weights,
            callbacks=callbacks,
            hooks=hooks,
            heldout_set=self.data.heldout,
        )
        try:
            return trainer.fit(resume=False), trainer
        except optuna.TrialPruned:
            raise
        except Exception as err:
            trial.set_user_attr("failure_reason", f"{type(err).__name__}: {err}")
            raise


# What a person reads first on a trial's page in optuna-dashboard, which lists user attributes in
# the order they were first written: the objective writes these, in this order, as each becomes
# known (the outcome first, as "running" until the trial ends; a queued trial's preset or
# promotion comes before it), then the reason a trial was pruned or failed, and the details last.
HEADLINE_KEYS = (
    "outcome",
    "rung",
    "arch_hash",
    "params",
    "macs",
    "latency_ms",
    "latency_source",
    "feasible",
    "val_miou",
    "val_miou_sd",
    "heldout_miou",
)

# Attributes a duplicate trial copies from the trial of the same network (flat keys, and the
# keys earlier versions wrote, so duplicates of old trials stay complete).
DUPLICATE_KEYS = (
    "params",
    "macs",
    "latency_median_ms",
    "latency_p90_ms",
    "latency_cv",
    "latency_source",
    "latency_flags",
    "latency_samples_ms",
    "device",
    "runtime",
    "precision",
    "power_mode",
    "feasible",
    "latency_over_budget_ms",
    "per_class_iou",
    "val_miou",
    "val_miou_sd",
    "heldout_miou",
)
LEGACY_KEYS = ("latency_ms", "latency_provenance", "latency")
MAX_STORED_SAMPLES = 200  # the attribute stays small; the cache and latency.json keep them all


def latency_attrs(result) -> dict[str, Any]:
    """A LatencyResult as flat user attributes a person can scan in the dashboard."""
    fp = result.fingerprint or {}
    runtime = fp.get("runtime") or fp.get("backend") or fp.get("model")
    version = fp.get("runtime_version")
    device = (
        fp.get("board_model")
        or fp.get("device")
        or fp.get("gpu_model")
        or fp.get("cpu_model")
        or fp.get("machine")
    )
    return {
        "latency_median_ms": result.median_ms,
        # The key earlier versions wrote, which the sampler-facing code and old tools read.
        "latency_ms": result.median_ms,
        "latency_p90_ms": result.p90_ms,
        "latency_cv": round(result.cv, 4) if math.isfinite(result.cv) else None,
        "latency_source": result.provenance.value,
        "latency_flags": list(result.flags),
        "device": None if device is None else str(device),
        "runtime": None if runtime is None else f"{runtime} {version or ''}".strip(),
        "precision": fp.get("precision"),
        "power_mode": fp.get("power_mode"),
        "latency_samples_ms": list(result.samples_ms[:MAX_STORED_SAMPLES]),
    }


def _write(trial, attrs: dict[str, Any]) -> None:
    """Set ``attrs`` as user attributes of ``trial``, in their order."""
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


def _iou_mapping(names: Sequence[str], values: Sequence[float]) -> dict[str, float | None]:
    """Per-class IoU by class name (NaN, a class absent from truth and prediction, is None)."""
    names = list(names) or [str(i) for i in range(len(values))]
    return {
        name: None if v is None or (isinstance(v, float) and math.isnan(v)) else round(v, 6)
        for name, v in zip(names, values, strict=True)
    }


def _overlay_png(trainer, val, frames: int = 3) -> bytes | None:
    """image | truth | prediction for the first val frames, from the trained model."""
    import torch

    from jetsearch.artifacts import overlay_panel_png
    from jetseg.data import to_uint8_image

    base = getattr(val, "dataset", val)
    indices = list(getattr(val, "indices", range(len(val))))[:frames]
    images, labels, preds = [], [], []
    model = trainer.model
    model.eval()
    with torch.no_grad():
        for i in indices:
            image, label = base[i]
            logits = model(image.unsqueeze(0).to(trainer.device))
            preds.append(logits.argmax(1)[0].cpu().numpy())
            images.append(to_uint8_image(image))
            labels.append(label.numpy())
    return overlay_panel_png(images, labels, preds) if images else None


def _find_completed(study, digest: str, exclude: int):
    import optuna

    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if t.number != exclude and t.user_attrs.get("arch_hash") == digest:
            return t
    return None
