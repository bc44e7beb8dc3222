"""Artifact stores, per-trial uploads, feasibility attributes and the overlay panel.

Everything runs on real Optuna journal / SQLite storages and real FileSystemArtifactStores in
``tmp_path``; the S3 store is built for real with boto3 (no request is sent).
"""

from __future__ import annotations

import io
import json
import math
import sys

import numpy as np
import optuna
import pytest
from optuna.artifacts import Boto3ArtifactStore, FileSystemArtifactStore, get_all_artifact_meta
from PIL import Image

from jetsearch.artifacts import (
    ARTIFACT_STORE_KEY,
    FEASIBILITY_NOTE_KEY,
    ArtifactStoreError,
    PrefixedArtifactStore,
    artifact_store_for,
    dashboard_command,
    default_artifact_dir,
    feasibility_attrs,
    mimetype_for,
    overlay_layout,
    overlay_panel_png,
    read_artifacts,
    study_feasibility_note,
    upload_file_artifact,
    upload_trial_artifacts,
)
from jetsearch.storage import open_storage
from jetseg.data import CAMVID_CLASSES, CAMVID_PALETTE

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Study.set_metric_names is marked experimental; the dashboard reads the names it stores.
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


# ---------------------------------------------------------------------------------------------
# artifact_store_for


def _round_trip(store, tmp_path) -> None:
    """An artifact written to ``store`` reads back the same."""
    store.write("0f0f-1234", io.BytesIO(b"payload"))
    with store.open_reader("0f0f-1234") as reader:
        assert reader.read() == b"payload"


def test_default_store_is_beside_a_journal_file(tmp_path):
    journal = tmp_path / "runs" / "jetsearch-studies.log"
    store = artifact_store_for(str(journal), None)
    assert isinstance(store, FileSystemArtifactStore)
    folder = tmp_path / "runs" / "jetsearch-studies-artifacts"
    assert folder.is_dir()
    assert default_artifact_dir(f"journal:{journal}") == folder
    _round_trip(store, tmp_path)
    assert (folder / "0f0f-1234").read_bytes() == b"payload"


def test_default_store_is_beside_an_sqlite_file(tmp_path):
    url = f"sqlite:///{tmp_path / 'search.db'}"
    store = artifact_store_for(url, None)
    assert isinstance(store, FileSystemArtifactStore)
    _round_trip(store, tmp_path)
    assert (tmp_path / "search-artifacts" / "0f0f-1234").read_bytes() == b"payload"


def test_path_setting_is_a_folder_there(tmp_path):
    shared = tmp_path / "nfs" / "artifacts"
    store = artifact_store_for("postgresql://db.example/jetsearch", str(shared))
    assert isinstance(store, FileSystemArtifactStore)
    _round_trip(store, tmp_path)
    assert (shared / "0f0f-1234").read_bytes() == b"payload"
    # The dashboard is pointed at the same folder.
    command = dashboard_command("postgresql://db.example/jetsearch", str(shared), port=8123)
    assert command[command.index("--artifact-dir") + 1] == str(shared)
    assert command[1] == "postgresql://db.example/jetsearch"


def test_database_server_without_setting_names_the_key(tmp_path):
    url = "postgresql://search:s3cret@db.example:5432/jetsearch"
    with pytest.raises(ArtifactStoreError) as err:
        artifact_store_for(url, None)
    message = str(err.value)
    assert ARTIFACT_STORE_KEY in message and "artifact_store" in message
    assert "s3://" in message
    assert "s3cret" not in message  # the password never reaches a log
    with pytest.raises(ArtifactStoreError, match=ARTIFACT_STORE_KEY):
        dashboard_command(url, None)
    with pytest.raises(ArtifactStoreError, match=ARTIFACT_STORE_KEY):
        artifact_store_for("sqlite:///:memory:", None)


def test_s3_without_boto3_says_what_to_install(monkeypatch):
    # boto3 is installed here; a None entry in sys.modules makes `import boto3` fail as it does
    # on a machine without it.
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(ArtifactStoreError, match="pip install boto3"):
        artifact_store_for("jetsearch-studies.log", "s3://bucket/prefix")


def test_s3_setting_builds_a_boto3_store_with_the_prefix(monkeypatch):
    pytest.importorskip("boto3")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    store = artifact_store_for("jetsearch-studies.log", "s3://my-bucket/studies/agx/")
    assert isinstance(store, PrefixedArtifactStore)
    assert isinstance(store.inner, Boto3ArtifactStore)
    assert store.inner.bucket == "my-bucket"
    assert store.key("abc-123") == "studies/agx/abc-123"
    plain = artifact_store_for("jetsearch-studies.log", "s3://my-bucket")
    assert isinstance(plain, Boto3ArtifactStore) and plain.bucket == "my-bucket"
    with pytest.raises(ArtifactStoreError, match="no bucket"):
        artifact_store_for("jetsearch-studies.log", "s3:///prefix")
    with pytest.raises(ArtifactStoreError, match="folder"):
        dashboard_command("jetsearch-studies.log", "s3://my-bucket")


def test_other_url_schemes_are_refused():
    with pytest.raises(ArtifactStoreError, match="s3://bucket/prefix"):
        artifact_store_for("jetsearch-studies.log", "gs://bucket/x")


def test_prefixed_store_round_trips_under_its_prefix(tmp_path):
    (tmp_path / "agx").mkdir()
    store = PrefixedArtifactStore(FileSystemArtifactStore(tmp_path), "/agx/")
    _round_trip(store, tmp_path)
    assert (tmp_path / "agx" / "0f0f-1234").read_bytes() == b"payload"
    store.remove("0f0f-1234")
    assert not (tmp_path / "agx" / "0f0f-1234").exists()


def test_dashboard_command_for_a_journal_file(tmp_path):
    journal = tmp_path / "s.log"
    command = dashboard_command(f"journal:{journal}", None, host="127.0.0.1", port=9000)
    assert command == [
        "optuna-dashboard",
        str(journal),
        "--host",
        "127.0.0.1",
        "--port",
        "9000",
        "--artifact-dir",
        str(tmp_path / "s-artifacts"),
    ]


# ---------------------------------------------------------------------------------------------
# uploads


def _study(tmp_path, name: str = "artifacts"):
    storage = open_storage(str(tmp_path / "studies.log"))
    study = optuna.create_study(
        study_name=name, storage=storage, directions=["maximize", "minimize"]
    )
    study.set_metric_names(["val_miou", "latency_ms"])
    return study, storage


def test_mimetypes():
    assert mimetype_for("config.yaml") == "application/yaml"
    assert mimetype_for("model.onnx") == "application/octet-stream"
    assert mimetype_for("overlay.png") == "image/png"
    assert mimetype_for("latency.json") == "application/json"
    assert mimetype_for("report.md") == "text/markdown"
    assert mimetype_for("front.csv") == "text/csv"


def test_upload_from_inside_the_objective(tmp_path):
    study, storage = _study(tmp_path)
    store = artifact_store_for(str(tmp_path / "studies.log"), None)
    record = {"median_ms": 12.5, "samples_ms": [12.4, 12.5, float("nan")], "provider": "local"}
    uploaded: dict[int, dict[str, str]] = {}

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        width = trial.suggest_int("width", 8, 64)
        uploaded[trial.number] = upload_trial_artifacts(
            trial,
            trial.study,
            store,
            config_yaml=f"width: {width}\n",
            onnx_bytes=b"\x08\x07onnx",
            overlay_png=b"\x89PNG fake" if trial.number == 0 else None,
            latency_record=record,
        )
        return 0.5, 12.5

    study.optimize(objective, n_trials=2)
    first, second = study.trials
    assert list(uploaded[0]) == ["config.yaml", "model.onnx", "overlay.png", "latency.json"]
    assert list(uploaded[1]) == ["config.yaml", "model.onnx", "latency.json"]
    metas = {m.filename: m for m in get_all_artifact_meta(first, storage=storage)}
    assert {name: m.artifact_id for name, m in metas.items()} == uploaded[0]
    assert metas["config.yaml"].mimetype == "application/yaml"
    assert metas["model.onnx"].mimetype == "application/octet-stream"
    assert metas["overlay.png"].mimetype == "image/png"
    assert metas["latency.json"].mimetype == "application/json"
    contents = read_artifacts(first, store, storage=storage)
    assert contents["config.yaml"] == f"width: {first.params['width']}\n".encode()
    assert contents["model.onnx"] == b"\x08\x07onnx"
    assert contents["overlay.png"] == b"\x89PNG fake"
    latency = json.loads(contents["latency.json"])  # strict JSON: NaN became null
    assert latency == {"median_ms": 12.5, "samples_ms": [12.4, 12.5, None], "provider": "local"}
    assert set(read_artifacts(second, store, storage=storage)) == {
        "config.yaml",
        "model.onnx",
        "latency.json",
    }
    # Nothing was attached to the study itself.
    assert get_all_artifact_meta(study) == []


def test_upload_to_a_frozen_trial_needs_its_storage(tmp_path):
    study, storage = _study(tmp_path)
    store = artifact_store_for(str(tmp_path / "studies.log"), None)
    trial = study.ask()
    frozen = study.trials[0]  # still running
    assert frozen.state == optuna.trial.TrialState.RUNNING
    with pytest.raises(ValueError, match="storage="):
        upload_trial_artifacts(
            frozen,
            study,
            store,
            config_yaml="a: 1\n",
            onnx_bytes=b"x",
            overlay_png=None,
            latency_record=None,
        )
    ids = upload_trial_artifacts(
        frozen,
        study,
        store,
        config_yaml="a: 1\n",
        onnx_bytes=b"x",
        overlay_png=None,
        latency_record=None,
        storage=storage,
    )
    assert list(ids) == ["config.yaml", "model.onnx"]
    # A trial number the study does not have is refused rather than attached elsewhere.
    other = optuna.create_study(study_name="other", storage=storage)
    with pytest.raises(ValueError, match="no trial 0"):
        upload_trial_artifacts(
            frozen,
            other,
            store,
            config_yaml="",
            onnx_bytes=b"",
            overlay_png=None,
            latency_record=None,
            storage=storage,
        )
    study.tell(trial, [0.4, 30.0])
    finished = study.trials[0]
    assert read_artifacts(finished, store, storage=storage) == {
        "config.yaml": b"a: 1\n",
        "model.onnx": b"x",
    }
    # Optuna refuses writes to a finished trial; the error says where such files go instead.
    with pytest.raises(ValueError, match="COMPLETE.*upload_file_artifact"):
        upload_trial_artifacts(
            finished,
            study,
            store,
            config_yaml="",
            onnx_bytes=b"",
            overlay_png=None,
            latency_record=None,
            storage=storage,
        )


def test_live_trial_of_another_study_is_refused(tmp_path):
    study, _ = _study(tmp_path)
    other = optuna.create_study(study_name="other", storage=open_storage(str(tmp_path / "o.log")))
    store = artifact_store_for(str(tmp_path / "studies.log"), None)
    trial = study.ask()
    with pytest.raises(ValueError, match="belongs to study 'artifacts'"):
        upload_trial_artifacts(
            trial,
            other,
            store,
            config_yaml="",
            onnx_bytes=b"",
            overlay_png=None,
            latency_record=None,
        )


def test_upload_file_artifact_to_a_study(tmp_path):
    study, storage = _study(tmp_path)
    store = artifact_store_for(str(tmp_path / "studies.log"), None)
    report = tmp_path / "report.md"
    report.write_text("# front\n")
    artifact_id = upload_file_artifact(study, store, report)
    (meta,) = get_all_artifact_meta(study)
    assert (meta.artifact_id, meta.filename, meta.mimetype) == (
        artifact_id,
        "report.md",
        "text/markdown",
    )
    assert read_artifacts(study, store) == {"report.md": b"# front\n"}
    with pytest.raises(FileNotFoundError):
        upload_file_artifact(study, store, tmp_path / "missing.png")


# ---------------------------------------------------------------------------------------------
# feasibility


def test_feasibility_attrs():
    assert feasibility_attrs(12.0, 24.0) == {"feasible": True, "latency_over_budget_ms": 0.0}
    assert feasibility_attrs(24.0, 24.0) == {"feasible": True, "latency_over_budget_ms": 0.0}
    over = feasibility_attrs(30.12345, 24.0)
    assert over["feasible"] is False
    assert math.isclose(over["latency_over_budget_ms"], 6.123)
    assert feasibility_attrs(99.0, None) == {"feasible": True, "latency_over_budget_ms": 0.0}
    for latency, budget in ((float("nan"), 24.0), (-1.0, 24.0), (10.0, 0.0)):
        with pytest.raises(ValueError):
            feasibility_attrs(latency, budget)


def test_study_feasibility_note(tmp_path):
    study, storage = _study(tmp_path)
    note = study_feasibility_note(study, 24.0)
    assert note.startswith("feasible means latency_median_ms <= 24 ms")
    reloaded = optuna.load_study(study_name="artifacts", storage=storage)
    assert reloaded.user_attrs[FEASIBILITY_NOTE_KEY] == note
    assert "every trial is feasible" in study_feasibility_note(study, None)


# ---------------------------------------------------------------------------------------------
# the overlay panel


def _frames(num: int, size: tuple[int, int], seed: int = 0):
    rng = np.random.default_rng(seed)
    height, width = size
    images = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(num)]
    # Every class and void appear in the truth, so the legend is the only place that proves
    # itself; predictions never hold void.
    labels = [rng.integers(0, len(CAMVID_CLASSES) + 1, (height, width)) for _ in range(num)]
    predictions = [rng.integers(0, len(CAMVID_CLASSES), (height, width)) for _ in range(num)]
    return images, labels, predictions


def _decode(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"))


def test_overlay_panel_layout_and_pixels():
    images, labels, predictions = _frames(3, (24, 40))
    png = overlay_panel_png(images, labels, predictions, CAMVID_CLASSES, CAMVID_PALETTE)
    pixels = _decode(png)
    layout = overlay_layout(3, (24, 40), len(CAMVID_CLASSES) + 1)
    assert layout.scale == 4  # 40 px frames are enlarged to 160 px panels
    assert pixels.shape == (layout.height, layout.width, 3)
    assert layout.width == 3 * 40 * 4 + 4 * 8
    assert layout.height > 3 * 24 * 4
    for row, boxes in enumerate(layout.panels):
        expected = (images[row], CAMVID_PALETTE[labels[row]], CAMVID_PALETTE[predictions[row]])
        for box, want in zip(boxes, expected, strict=True):
            left, top, right, bottom = box
            got = pixels[top:bottom:4, left:right:4]  # one pixel per enlarged frame pixel
            np.testing.assert_array_equal(got, want)


def test_overlay_panel_draws_labels_and_legend():
    images, labels, predictions = _frames(2, (16, 16), seed=1)
    pixels = _decode(overlay_panel_png(images, labels, predictions, scale=10))
    layout = overlay_layout(2, (16, 16), len(CAMVID_CLASSES) + 1, scale=10)
    assert pixels.shape == (layout.height, layout.width, 3)
    # Every class colour (and void's black) sits in its swatch in the legend area.
    left, top, right, bottom = layout.legend
    legend = pixels[top:bottom, left:right].reshape(-1, 3)
    legend_colours = {tuple(c) for c in np.unique(legend, axis=0)}
    for colour in CAMVID_PALETTE:
        assert tuple(colour) in legend_colours
    for colour, swatch in zip(CAMVID_PALETTE, layout.legend_swatches, strict=True):
        centre = pixels[(swatch[1] + swatch[3]) // 2, (swatch[0] + swatch[2]) // 2]
        np.testing.assert_array_equal(centre, colour)
    # The class names and panel titles are drawn: dark text pixels beside the swatches and in
    # the caption strip above each panel, which would otherwise be plain background.
    names = pixels[top:bottom, layout.legend_swatches[0][2] + 3 : layout.legend_swatches[1][0]]
    assert (names.sum(axis=2) < 200).sum() > 20
    for box in layout.panels[0]:
        caption = pixels[box[1] - 20 : box[1] - 2, box[0] : box[2]]
        assert (caption.sum(axis=2) < 200).sum() > 10


def test_overlay_panel_with_another_palette():
    names = ("road", "car")
    palette = np.array([(10, 200, 30), (250, 5, 5)], np.uint8)  # no void row: void is black
    image = np.zeros((8, 8, 3), np.uint8)
    label = np.array([[0, 1, 2, 0]] * 8).repeat(2, axis=1)
    png = overlay_panel_png([image], [label], [label.clip(0, 1)], names, palette, scale=20)
    pixels = _decode(png)
    layout = overlay_layout(1, (8, 8), 3, scale=20)
    swatches = [pixels[(s[1] + s[3]) // 2, (s[0] + s[2]) // 2] for s in layout.legend_swatches]
    np.testing.assert_array_equal(np.array(swatches), [(10, 200, 30), (250, 5, 5), (0, 0, 0)])


def test_overlay_panel_rejects_bad_input():
    images, labels, predictions = _frames(2, (8, 8))
    with pytest.raises(ValueError, match="as many"):
        overlay_panel_png(images, labels[:1], predictions)
    with pytest.raises(ValueError, match="uint8"):
        overlay_panel_png([images[0].astype(np.float32)], labels[:1], predictions[:1])
    with pytest.raises(ValueError, match="values must lie in 0..10"):
        overlay_panel_png(images, labels, labels)  # void in a prediction
    with pytest.raises(ValueError, match="palette"):
        overlay_panel_png(images, labels, predictions, palette=CAMVID_PALETTE[:5])
