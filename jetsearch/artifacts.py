"""Per-trial artifacts in an Optuna artifact store, and feasibility the dashboard can show.

Every trial of a study keeps the files that explain it: the network's ``config.yaml``, its
``model.onnx``, an ``overlay.png`` of a few validation frames (image | truth | prediction) and
the ``latency.json`` record of how its latency was measured. They live in an Optuna artifact
store beside the study storage and optuna-dashboard shows them on each trial's page::

    >>> store = artifact_store_for("jetsearch-studies.log", None)  # ./jetsearch-studies-artifacts/
    >>> ids = upload_trial_artifacts(trial, trial.study, store, config_yaml=yaml_text,
    ...                              onnx_bytes=onnx, overlay_png=png, latency_record=record)
    >>> sorted(ids)
    ['config.yaml', 'latency.json', 'model.onnx', 'overlay.png']
    >>> dashboard_command("jetsearch-studies.log", None, port=8080)
    ['optuna-dashboard', 'jetsearch-studies.log', '--host', '127.0.0.1', '--port', '8080',
     '--artifact-dir', '/abs/path/jetsearch-studies-artifacts']

Where the store is (:func:`artifact_store_for`, the study key :data:`ARTIFACT_STORE_KEY`):

- nothing set: a folder ``<storage file stem>-artifacts/`` beside a journal or SQLite file;
  a database server (``postgresql://``, ``mysql://``, ...) has no such folder, so it needs a
  setting;
- a path: a folder there (a shared filesystem when workers run on several machines);
- ``s3://bucket/prefix``: an S3 bucket through boto3 (``pip install boto3``); credentials,
  region and endpoint (``AWS_ENDPOINT_URL_S3`` for MinIO and the like) come from boto3's usual
  configuration.

optuna-dashboard 0.21 does not show ``Trial.set_constraint`` values, so whether a trial met the
latency budget is also stored as plain user attributes (:func:`feasibility_attrs`), and the
study says what they mean (:func:`study_feasibility_note`).

Only Optuna's public artifact API is used (``optuna.artifacts.upload_artifact``,
``get_all_artifact_meta``, ``download_artifact``, ``FileSystemArtifactStore``,
``Boto3ArtifactStore``).
"""

from __future__ import annotations

import io
import json
import math
import mimetypes
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import numpy as np

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage

__all__ = [
    "ARTIFACT_STORE_KEY",
    "FEASIBILITY_NOTE_KEY",
    "TRIAL_ARTIFACT_NAMES",
    "ArtifactStore",
    "ArtifactStoreError",
    "OverlayLayout",
    "PrefixedArtifactStore",
    "artifact_store_for",
    "dashboard_command",
    "default_artifact_dir",
    "feasibility_attrs",
    "mimetype_for",
    "overlay_layout",
    "overlay_panel_png",
    "read_artifacts",
    "study_feasibility_note",
    "upload_file_artifact",
    "upload_trial_artifacts",
]

# The study YAML key (and the name of the matching command-line option) that sets the store.
ARTIFACT_STORE_KEY = "artifact_store"
# The study user attribute that explains the trials' feasibility attributes.
FEASIBILITY_NOTE_KEY = "feasibility"
# What upload_trial_artifacts stores, in this order.
TRIAL_ARTIFACT_NAMES = ("config.yaml", "model.onnx", "overlay.png", "latency.json")

# Mimetypes by suffix. optuna-dashboard previews image/* and offers the rest for download;
# ONNX has no registered type, so a model is plain bytes to a browser.
_MIMETYPES = {
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".onnx": "application/octet-stream",
    ".json": "application/json",
    ".jsonl": "application/jsonl",
    ".png": "image/png",
    ".md": "text/markdown",
    ".csv": "text/csv",
    ".txt": "text/plain",
    ".html": "text/html",
    ".svg": "image/svg+xml",
}


class ArtifactStoreError(ValueError):
    """An artifact store setting that cannot be used; the message says what to set or install."""


class ArtifactStore(Protocol):
    """What Optuna needs of an artifact store, as ``FileSystemArtifactStore`` provides it."""

    def open_reader(self, artifact_id: str) -> BinaryIO: ...

    def write(self, artifact_id: str, content_body: BinaryIO) -> None: ...

    def remove(self, artifact_id: str) -> None: ...


class PrefixedArtifactStore:
    """Another store with every artifact id under ``prefix/``: one S3 bucket, many studies."""

    def __init__(self, inner: ArtifactStore, prefix: str) -> None:
        self.inner = inner
        self.prefix = prefix.strip("/")

    def key(self, artifact_id: str) -> str:
        """The id the inner store sees for ``artifact_id``."""
        return f"{self.prefix}/{artifact_id}" if self.prefix else artifact_id

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self.inner.open_reader(self.key(artifact_id))

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.inner.write(self.key(artifact_id), content_body)

    def remove(self, artifact_id: str) -> None:
        self.inner.remove(self.key(artifact_id))


# ---------------------------------------------------------------------------------------------
# where the store is


def _redact(url: str) -> str:
    """``url`` without its password, for error messages."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def default_artifact_dir(storage_url: str) -> Path:
    """The folder beside a journal or SQLite storage file: ``<stem>-artifacts/``, absolute.

    Raises:
        ArtifactStoreError: ``storage_url`` is a database server (or in-memory SQLite), which has
            no folder beside it; the message names :data:`ARTIFACT_STORE_KEY`.
    """
    from jetsearch.storage import locate_storage

    path = locate_storage(storage_url).file
    if path is None:
        raise ArtifactStoreError(
            f"storage {_redact(storage_url)} is not a file, so there is no folder beside it for "
            f"the trials' artifacts: set {ARTIFACT_STORE_KEY!r} in the study (or pass "
            f"--{ARTIFACT_STORE_KEY.replace('_', '-')}) to a folder that every worker and the "
            "dashboard can reach, or to s3://bucket/prefix"
        )
    path = path.expanduser().absolute()
    return path.with_name(f"{path.stem}-artifacts")


def _parse_s3(setting: str) -> tuple[str, str]:
    bucket, _, prefix = setting[len("s3://") :].partition("/")
    if not bucket:
        raise ArtifactStoreError(
            f"{ARTIFACT_STORE_KEY} {setting!r} names no bucket; expected s3://bucket/prefix"
        )
    return bucket, prefix.strip("/")


def artifact_store_for(storage_url: str, setting: str | None) -> ArtifactStore:
    """The artifact store of a study whose storage is ``storage_url``.

    Args:
        storage_url: the study storage as ``jetsearch.storage.open_storage`` takes it (a journal
            file path, ``journal:PATH``, ``sqlite:///FILE``, ``postgresql://...``).
        setting: the study's :data:`ARTIFACT_STORE_KEY`: ``None`` for the folder beside the
            storage file (:func:`default_artifact_dir`), a folder path, or
            ``s3://bucket/prefix``.

    Returns:
        A ``FileSystemArtifactStore`` (its folder created), or a ``Boto3ArtifactStore``, wrapped
        in a :class:`PrefixedArtifactStore` when the S3 URL has a prefix.

    Raises:
        ArtifactStoreError: a database-server storage without a setting (the message names the
            key), an S3 setting without boto3 installed (it says ``pip install boto3``), an S3
            URL without a bucket, or another URL scheme.
    """
    from optuna.artifacts import FileSystemArtifactStore

    if setting is not None and not str(setting).strip():
        setting = None
    if setting is None:
        folder = default_artifact_dir(storage_url)
    elif str(setting).startswith("s3://"):
        bucket, prefix = _parse_s3(str(setting))
        try:
            import boto3  # noqa: F401  (Boto3ArtifactStore needs it)
        except ImportError:
            raise ArtifactStoreError(
                f"{ARTIFACT_STORE_KEY} {setting!r} is an S3 bucket, which needs boto3: "
                "pip install boto3"
            ) from None
        from optuna.artifacts import Boto3ArtifactStore

        store = Boto3ArtifactStore(bucket)
        return PrefixedArtifactStore(store, prefix) if prefix else store
    elif "://" in str(setting):
        raise ArtifactStoreError(
            f"{ARTIFACT_STORE_KEY} {setting!r}: expected a folder path or s3://bucket/prefix"
        )
    else:
        folder = Path(setting).expanduser().absolute()
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(folder)


def dashboard_command(
    storage_url: str,
    setting: str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
) -> list[str]:
    """The optuna-dashboard command line that shows a study with its artifacts.

    The artifact folder is the one :func:`artifact_store_for` uses for the same arguments.

    Raises:
        ArtifactStoreError: an S3 setting (optuna-dashboard's ``--artifact-dir`` takes a folder;
            serve such a study with ``optuna_dashboard.run_server(storage,
            artifact_store=artifact_store_for(...))``), or a database-server storage without a
            setting.
    """
    if setting is not None and str(setting).startswith("s3://"):
        raise ArtifactStoreError(
            f"optuna-dashboard --artifact-dir takes a folder, not {setting!r}: serve the study "
            "with optuna_dashboard.run_server(storage, artifact_store=artifact_store_for(...))"
        )
    if setting is None or not str(setting).strip():
        folder = default_artifact_dir(storage_url)
    else:
        folder = Path(setting).expanduser().absolute()
    from jetsearch.storage import locate_storage

    return [
        "optuna-dashboard",
        locate_storage(storage_url).dashboard_arg,
        "--host",
        host,
        "--port",
        str(port),
        "--artifact-dir",
        str(folder),
    ]


# ---------------------------------------------------------------------------------------------
# uploading


def mimetype_for(filename: str) -> str:
    """The mimetype an artifact named ``filename`` is stored with."""
    suffix = Path(filename).suffix.lower()
    if suffix in _MIMETYPES:
        return _MIMETYPES[suffix]
    guessed, _ = mimetypes.guess_type(filename)
    return guessed or "application/octet-stream"


def _json_safe(value: Any) -> Any:
    """NaN and infinities as ``null``, so the record stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _resolve_storage(trial_or_frozen, study, storage):
    """The storage a trial's artifacts are attached through; checks the trial is ``study``'s."""
    import optuna

    if isinstance(trial_or_frozen, optuna.Trial):
        if study is not None and trial_or_frozen.study.study_name != study.study_name:
            raise ValueError(
                f"trial {trial_or_frozen.number} belongs to study "
                f"{trial_or_frozen.study.study_name!r}, not {study.study_name!r}"
            )
        return trial_or_frozen.storage
    if not isinstance(trial_or_frozen, optuna.trial.FrozenTrial):
        raise TypeError(
            f"expected an optuna Trial or FrozenTrial, got {type(trial_or_frozen).__name__}"
        )
    if trial_or_frozen.state.is_finished():
        # Optuna's storages refuse any write to a finished trial, artifacts included.
        raise ValueError(
            f"trial {trial_or_frozen.number} is {trial_or_frozen.state.name}: artifacts attach "
            "only to running trials; attach files about finished ones to the study "
            "(upload_file_artifact(study, ...))"
        )
    if storage is None:
        # optuna.Study does not hand out its storage, and a FrozenTrial has none.
        raise ValueError(
            "a FrozenTrial's artifacts need storage= (the BaseStorage its study was opened with)"
        )
    if study is not None:
        study_id = storage.get_study_id_from_name(study.study_name)
        try:
            storage.get_trial_id_from_study_id_trial_number(study_id, trial_or_frozen.number)
        except KeyError:
            raise ValueError(
                f"study {study.study_name!r} has no trial {trial_or_frozen.number}"
            ) from None
    return storage


def _upload_bytes(study_or_trial, store: ArtifactStore, filename: str, data: bytes, storage) -> str:
    from optuna.artifacts import upload_artifact

    # upload_artifact takes a file path, and names the artifact after the file.
    with tempfile.TemporaryDirectory(prefix="jetsearch-artifact-") as folder:
        path = Path(folder) / filename
        path.write_bytes(data)
        return upload_artifact(
            artifact_store=store,
            file_path=str(path),
            study_or_trial=study_or_trial,
            storage=storage,
            mimetype=mimetype_for(filename),
        )


def upload_trial_artifacts(
    trial_or_frozen: optuna.Trial | optuna.trial.FrozenTrial,
    study: optuna.Study | None,
    store: ArtifactStore,
    *,
    config_yaml: str,
    onnx_bytes: bytes,
    overlay_png: bytes | None,
    latency_record: Mapping[str, Any] | None,
    storage: BaseStorage | None = None,
) -> dict[str, str]:
    """Attach ``config.yaml``, ``model.onnx``, ``overlay.png`` and ``latency.json`` to a trial.

    Works for the live ``Trial`` inside the objective (its storage is used) and for the
    ``FrozenTrial`` of a running trial (from ``study.ask()`` in another process, say), which
    needs ``storage`` as well. A finished trial takes no more artifacts (Optuna's storages
    refuse writes to it): attach to the study instead.

    Args:
        trial_or_frozen: the trial.
        study: the trial's study; the trial is checked to belong to it (``None`` skips that).
        store: from :func:`artifact_store_for`.
        config_yaml: the network's config (``jetseg.config.dump_config``).
        onnx_bytes: the exported network (``jetseg.export.export_onnx``).
        overlay_png: :func:`overlay_panel_png` of a few val frames; ``None`` when the trial did
            not train (pruned over the latency budget) and is not uploaded.
        latency_record: how the latency was measured (``LatencyResult.to_dict()``); stored as
            JSON with NaN as ``null``; ``None`` is not uploaded.
        storage: a FrozenTrial's storage (``optuna.Study`` keeps its own private).

    Returns:
        ``{filename: artifact_id}`` of what was uploaded, in :data:`TRIAL_ARTIFACT_NAMES` order.
    """
    target_storage = _resolve_storage(trial_or_frozen, study, storage)
    files: dict[str, bytes] = {
        "config.yaml": config_yaml.encode("utf-8"),
        "model.onnx": bytes(onnx_bytes),
    }
    if overlay_png is not None:
        files["overlay.png"] = bytes(overlay_png)
    if latency_record is not None:
        record = json.dumps(_json_safe(latency_record), indent=2, sort_keys=True)
        files["latency.json"] = (record + "\n").encode("utf-8")
    return {
        name: _upload_bytes(trial_or_frozen, store, name, data, target_storage)
        for name, data in files.items()
    }


def upload_file_artifact(
    study_or_trial: optuna.Study | optuna.Trial | optuna.trial.FrozenTrial,
    store: ArtifactStore,
    path: str | Path,
    *,
    mimetype: str | None = None,
    storage: BaseStorage | None = None,
) -> str:
    """Attach a file (a report, a plot) to a study or a trial; returns the artifact id.

    The artifact is named after the file; ``mimetype`` defaults to :func:`mimetype_for`. A
    FrozenTrial needs ``storage``.
    """
    from optuna.artifacts import upload_artifact

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no file {path} to upload")
    return upload_artifact(
        artifact_store=store,
        file_path=str(path),
        study_or_trial=study_or_trial,
        storage=storage,
        mimetype=mimetype or mimetype_for(path.name),
    )


def read_artifacts(
    study_or_trial: optuna.Study | optuna.Trial | optuna.trial.FrozenTrial,
    store: ArtifactStore,
    *,
    storage: BaseStorage | None = None,
) -> dict[str, bytes]:
    """``{filename: content}`` of the artifacts attached to a study or trial (a FrozenTrial
    needs ``storage``); a later upload of the same filename wins."""
    from optuna.artifacts import download_artifact, get_all_artifact_meta

    contents: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="jetsearch-artifact-") as folder:
        for index, meta in enumerate(get_all_artifact_meta(study_or_trial, storage=storage)):
            path = Path(folder) / f"{index}"
            download_artifact(
                artifact_store=store, file_path=str(path), artifact_id=meta.artifact_id
            )
            contents[meta.filename] = path.read_bytes()
    return contents


# ---------------------------------------------------------------------------------------------
# feasibility


def feasibility_attrs(latency_ms: float, budget_ms: float | None) -> dict[str, Any]:
    """The user attributes that show in optuna-dashboard whether a trial met the budget.

    ``{"feasible": latency_ms <= budget_ms, "latency_over_budget_ms": how far over (0.0 when
    within)}``; without a budget every trial is feasible.
    """
    latency_ms = float(latency_ms)
    if not math.isfinite(latency_ms) or latency_ms < 0:
        raise ValueError(f"latency_ms must be a finite number >= 0, got {latency_ms}")
    if budget_ms is None:
        return {"feasible": True, "latency_over_budget_ms": 0.0}
    budget_ms = float(budget_ms)
    if not math.isfinite(budget_ms) or budget_ms <= 0:
        raise ValueError(f"budget_ms must be a finite number > 0, got {budget_ms}")
    over = max(0.0, latency_ms - budget_ms)
    # Microseconds are far below the measurement noise; more digits only clutter the table.
    return {"feasible": latency_ms <= budget_ms, "latency_over_budget_ms": round(over, 3)}


def study_feasibility_note(
    study: optuna.Study, budget_ms: float | None, *, latency_key: str = "latency_median_ms"
) -> str:
    """Say on the study what its trials' ``feasible`` / ``latency_over_budget_ms`` mean.

    Sets the study user attribute :data:`FEASIBILITY_NOTE_KEY` and returns the note.
    """
    if budget_ms is None:
        note = (
            "no latency budget: every trial is feasible (see each trial's feasible / "
            "latency_over_budget_ms)"
        )
    else:
        note = (
            f"feasible means {latency_key} <= {float(budget_ms):g} ms; see each trial's "
            "feasible / latency_over_budget_ms"
        )
    study.set_user_attr(FEASIBILITY_NOTE_KEY, note)
    return note


# ---------------------------------------------------------------------------------------------
# the overlay panel

_MARGIN = 8  # px around and between panels
_CAPTION_H = 22  # px of caption strip above each row's panels
_SWATCH = 14  # px square of a legend colour
_LEGEND_ROW_H = 22
_LEGEND_ITEM_W = 150  # px per legend entry: swatch, gap, class name
_MIN_PANEL_W = 160  # small frames are enlarged (nearest neighbour) to at least this width
_BACKGROUND = (255, 255, 255)
_TEXT = (20, 20, 20)
PANEL_TITLES = ("image", "truth", "prediction")


@dataclass(frozen=True)
class OverlayLayout:
    """Where :func:`overlay_panel_png` puts things; boxes are (left, top, right, bottom)."""

    width: int
    height: int
    scale: int  # each frame pixel is scale x scale panel pixels
    panels: tuple[tuple[tuple[int, int, int, int], ...], ...]  # [row][image/truth/prediction]
    legend: tuple[int, int, int, int]
    legend_swatches: tuple[tuple[int, int, int, int], ...]  # one per legend entry


def overlay_layout(
    num_frames: int, frame_size: tuple[int, int], num_entries: int, scale: int | None = None
) -> OverlayLayout:
    """The geometry of an overlay panel of ``num_frames`` (H, W) frames and a legend of
    ``num_entries`` colours. ``scale`` defaults to the smallest whole factor that makes a panel
    at least 160 px wide."""
    height, width = frame_size
    if num_frames < 1 or height < 1 or width < 1:
        raise ValueError(
            f"need at least one frame of positive size, got {num_frames} x {frame_size}"
        )
    if scale is None:
        scale = max(1, math.ceil(_MIN_PANEL_W / width))
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    panel_w, panel_h = width * scale, height * scale
    total_w = 3 * panel_w + 4 * _MARGIN
    rows = []
    top = _MARGIN
    for _ in range(num_frames):
        top += _CAPTION_H
        rows.append(
            tuple(
                (
                    _MARGIN + col * (panel_w + _MARGIN),
                    top,
                    _MARGIN + col * (panel_w + _MARGIN) + panel_w,
                    top + panel_h,
                )
                for col in range(3)
            )
        )
        top += panel_h + _MARGIN
    per_row = max(1, (total_w - 2 * _MARGIN) // _LEGEND_ITEM_W)
    legend_rows = math.ceil(num_entries / per_row)
    legend = (_MARGIN, top, total_w - _MARGIN, top + legend_rows * _LEGEND_ROW_H)
    swatches = []
    for index in range(num_entries):
        row, col = divmod(index, per_row)
        left = legend[0] + col * _LEGEND_ITEM_W
        swatch_top = legend[1] + row * _LEGEND_ROW_H + (_LEGEND_ROW_H - _SWATCH) // 2
        swatches.append((left, swatch_top, left + _SWATCH, swatch_top + _SWATCH))
    return OverlayLayout(
        width=total_w,
        height=legend[3] + _MARGIN,
        scale=scale,
        panels=tuple(rows),
        legend=legend,
        legend_swatches=tuple(swatches),
    )


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def overlay_panel_png(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    predictions: Sequence[np.ndarray],
    class_names: Sequence[str] | None = None,
    palette: np.ndarray | None = None,
    *,
    captions: Sequence[str] | None = None,
    scale: int | None = None,
) -> bytes:
    """A PNG of a few val frames: one row each of image | truth | prediction, and a legend.

    Args:
        images: uint8 (H, W, 3) frames (``jetseg.data.to_uint8_image`` undoes the
            normalisation of a dataset tensor); all the same size.
        labels: (H, W) class-index maps, ``len(class_names)`` for void.
        predictions: (H, W) predicted class indices (argmax of the logits).
        class_names: default ``jetseg.data.CAMVID_CLASSES``.
        palette: (num_classes [+ 1 for void], 3) uint8 colours, default
            ``jetseg.data.CAMVID_PALETTE``; void is black when the palette has no row for it.
        captions: one per frame, added to the row's image caption (e.g. the frame's name).
        scale: whole-number enlargement of the frames (see :func:`overlay_layout`).

    Returns:
        The PNG file's bytes; :func:`overlay_layout` gives its geometry.
    """
    from PIL import Image, ImageDraw

    from jetseg.data import CAMVID_CLASSES, CAMVID_PALETTE

    class_names = tuple(CAMVID_CLASSES if class_names is None else class_names)
    palette = np.asarray(CAMVID_PALETTE if palette is None else palette)
    num_classes = len(class_names)
    if (
        palette.ndim != 2
        or palette.shape[1] != 3
        or len(palette) not in (num_classes, num_classes + 1)
    ):
        raise ValueError(
            f"palette must be ({num_classes} or {num_classes + 1}, 3) colours for "
            f"{num_classes} classes, got shape {palette.shape}"
        )
    if len(palette) == num_classes:
        palette = np.concatenate([palette, np.zeros((1, 3), palette.dtype)])
    palette = palette.astype(np.uint8)
    if not (len(images) == len(labels) == len(predictions)) or not images:
        raise ValueError(
            f"need as many images, labels and predictions (at least one), got "
            f"{len(images)}, {len(labels)}, {len(predictions)}"
        )
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"{len(captions)} captions for {len(images)} frames")
    frames = [np.asarray(image) for image in images]
    size = frames[0].shape[:2]
    painted = []
    for index, (image, label, prediction) in enumerate(
        zip(frames, labels, predictions, strict=True)
    ):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"frame {index}: expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}"
            )
        if image.shape[:2] != size:
            raise ValueError(f"frame {index} is {image.shape[:2]}, frame 0 is {size}")
        maps = []
        for what, values, top in (
            ("label", label, num_classes),
            ("prediction", prediction, num_classes - 1),
        ):
            values = np.asarray(values)
            if values.shape != size:
                raise ValueError(f"frame {index}: {what} shape {values.shape} != image {size}")
            if values.size and (values.min() < 0 or values.max() > top):
                raise ValueError(
                    f"frame {index}: {what} values must lie in 0..{top}, got "
                    f"{int(values.min())}..{int(values.max())}"
                )
            maps.append(palette[values.astype(np.intp)])  # (H, W) -> (H, W, 3)
        painted.append((image, *maps))

    entries = list(zip(class_names, palette[:num_classes], strict=True))
    entries.append(("void", palette[num_classes]))
    layout = overlay_layout(len(frames), size, len(entries), scale)
    canvas = Image.new("RGB", (layout.width, layout.height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font(13)
    for row, (boxes, panels) in enumerate(zip(layout.panels, painted, strict=True)):
        for col, (box, panel) in enumerate(zip(boxes, panels, strict=True)):
            tile = Image.fromarray(np.ascontiguousarray(panel), "RGB")
            if layout.scale > 1:
                tile = tile.resize((box[2] - box[0], box[3] - box[1]), Image.Resampling.NEAREST)
            canvas.paste(tile, box[:2])
            title = PANEL_TITLES[col]
            if col == 0 and captions is not None:
                title = f"{title}: {captions[row]}"
            draw.text((box[0], box[1] - _CAPTION_H + 4), title, fill=_TEXT, font=font)
    for (name, colour), swatch in zip(entries, layout.legend_swatches, strict=True):
        draw.rectangle(swatch, fill=tuple(int(c) for c in colour), outline=_TEXT)
        draw.text((swatch[2] + 5, swatch[1] - 1), name, fill=_TEXT, font=font)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
