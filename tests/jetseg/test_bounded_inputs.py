"""Every YAML, ONNX or image file the tool reads is size-checked, and YAML alias bombs fail fast.

The CLI cases run in one subprocess under a 1.5 GiB address-space cap (a bomb that expanded, or
a file read whole, would die of it instead of passing); the subprocess imports the CLI first and
times each ``main(argv)``, so that the refusal is timed and not the import of torch. Oversize
files are sparse: they claim gigabytes and use no disk.
"""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import yaml
from PIL import Image

from jetsearch.latency import InvalidModelError
from jetsearch.latency._onnx_input import MAX_ONNX_BYTES, read_onnx_bytes
from jetsearch.latency.worker import DEFAULT_MAX_UPLOAD_MB
from jetseg.config import (
    MAX_YAML_BYTES,
    MAX_YAML_DEPTH,
    MAX_YAML_VALUES,
    BoundedSafeLoader,
    ConfigError,
    YAMLTooLargeError,
    load_config,
    load_yaml_text,
)
from jetseg.data import CamVid, DataError
from jetseg.fileio import (
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    FileTooLargeError,
    format_bytes,
    open_image,
    read_bytes_bounded,
)
from jetseg.predict import predict_images
from jetseg.validation import DESCRIBE_LIMIT, describe

REPO = Path(__file__).resolve().parents[2]
GIB = 1024**3
MEMORY_CAP = int(1.5 * GIB)
MESSAGE_LIMIT = 2048


def alias_bomb(levels: int = 9) -> str:
    """A flow list whose items anchor a list of 9 strings, then 9 aliases of the one before,
    ``levels`` deep: about 400 bytes that expand to 9**levels strings."""
    items = ["&a0 [" + ", ".join(["lol"] * 9) + "]"]
    items += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "[" + ", ".join(items) + "]"


def sparse_file(path: Path, size: int) -> Path:
    """A file that claims ``size`` bytes and holds one: no disk is used for the rest."""
    with path.open("wb") as handle:
        handle.seek(size - 1)
        handle.write(b"\n")
    return path


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` RGB pixels and which holds none."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------------------
# through the real CLI, in a subprocess with a memory cap

DRIVER = r"""
import contextlib, io, json, sys, time
import torch, jetseg.model, jetsearch.run  # imported first: only the refusals are timed
from jetsearch.cli import main
from jetsearch.latency import InvalidModelError
from jetsearch.latency.local import LocalProvider

cases, out = json.loads(sys.argv[1]), sys.argv[2]
results = {}
for name, argv in cases.items():
    err = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(err):
        rc = main(argv)
    results[name] = {"rc": rc, "seconds": time.perf_counter() - start, "stderr": err.getvalue()}
start = time.perf_counter()
try:
    LocalProvider().measure(sys.argv[3], (1, 3, 64, 64))
    outcome = "measured"
except InvalidModelError as error:
    outcome = str(error)
results["onnx"] = {"seconds": time.perf_counter() - start, "stderr": outcome}
with open(out, "w") as handle:
    json.dump(results, handle)
"""


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Each bad file through ``jetsearch`` in one capped subprocess: exit code, time, stderr."""
    folder = tmp_path_factory.mktemp("bounded")
    files = {
        "bomb_name": f"name: {alias_bomb()}\n",
        "bomb_stages": f"name: bomb\nstages: {alias_bomb()}\n",
        "bomb_description": f"description: {alias_bomb()}\nspace: tiny\n",
        "recursive": "name: loop\nstages: &loop [*loop]\n",
    }
    paths = {}
    for name, text in files.items():
        paths[name] = folder / f"{name}.yaml"
        paths[name].write_text(text)
    paths["huge"] = sparse_file(folder / "huge.yaml", 2 * GIB)
    paths["binary"] = folder / "binary.yaml"
    paths["binary"].write_bytes(b"name: \xff\xfe\x00bomb\n")
    big_onnx = sparse_file(folder / "big.onnx", 8 * GIB)
    cases = {
        "bomb_name": ["model", "show", str(paths["bomb_name"])],
        "bomb_stages": ["model", "show", str(paths["bomb_stages"])],
        "bomb_description": ["study", "--target", str(paths["bomb_description"]), "--trials", "1"],
        "recursive": ["model", "show", str(paths["recursive"])],
        "huge": ["model", "show", str(paths["huge"])],
        "huge_study": ["study", "--target", str(paths["huge"]), "--trials", "1"],
        "binary": ["model", "show", str(paths["binary"])],
        "onnx_as_config": ["latency", "measure", str(big_onnx)],
    }
    out = folder / "results.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("JETSEARCH_DEBUG", None)
    subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(cases), str(out), str(big_onnx)],
        cwd=folder,
        env=env,
        preexec_fn=_cap_memory,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    results = json.loads(out.read_text())
    paths.update(huge_study=paths["huge"], onnx_as_config=big_onnx, onnx=big_onnx)
    for name, result in results.items():
        result["file"] = str(paths[name])
    return results


@pytest.mark.parametrize("case", ["bomb_name", "bomb_stages", "bomb_description", "recursive"])
@pytest.mark.slow
def test_alias_bombs_are_refused_fast_by_the_cli(cli_runs: dict[str, dict], case: str) -> None:
    run = cli_runs[case]
    assert run["rc"] == 2, run
    assert run["seconds"] < 1.0, run
    assert run["file"] in run["stderr"]
    assert len(run["stderr"]) < MESSAGE_LIMIT
    assert "refused" in run["stderr"]
    assert run["stderr"].count("lol") < 20  # the expanding value is never printed


@pytest.mark.slow
def test_the_console_script_entry_point_exits_2_on_a_bomb(tmp_path: Path) -> None:
    """``python -m jetsearch.cli`` itself (import time included), under the same cap."""
    path = tmp_path / "bomb.yaml"
    path.write_text(f"stages: {alias_bomb()}\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("JETSEARCH_DEBUG", None)
    done = subprocess.run(
        [sys.executable, "-m", "jetsearch.cli", "model", "show", str(path)],
        env=env,
        preexec_fn=_cap_memory,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert str(path) in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr) < MESSAGE_LIMIT


def test_alias_bomb_message_says_what_was_refused(cli_runs: dict[str, dict]) -> None:
    assert (
        f"more than {MAX_YAML_VALUES} values once its aliases are expanded"
        in (cli_runs["bomb_stages"]["stderr"])
    )
    assert "refers to a value that contains it" in cli_runs["recursive"]["stderr"]


@pytest.mark.parametrize("case", ["huge", "huge_study", "onnx_as_config"])
def test_oversize_yaml_is_refused_by_the_cli_before_it_is_read(
    cli_runs: dict[str, dict], case: str
) -> None:
    run = cli_runs[case]
    assert run["rc"] == 2, run
    assert run["seconds"] < 1.0, run
    assert run["file"] in run["stderr"]
    # `latency measure` takes an ONNX file as a model (the ONNX limit), any other file as YAML.
    limit = "64.0 MiB" if case == "onnx_as_config" else "1.0 MiB"
    assert f"over the limit of {limit}" in run["stderr"]
    assert len(run["stderr"]) < MESSAGE_LIMIT


def test_binary_yaml_names_the_file(cli_runs: dict[str, dict]) -> None:
    run = cli_runs["binary"]
    assert run["rc"] == 2, run
    assert run["file"] in run["stderr"]
    assert "not UTF-8 text: byte 0xff at offset 6" in run["stderr"]


def test_oversize_onnx_file_is_refused_before_it_is_read(cli_runs: dict[str, dict]) -> None:
    run = cli_runs["onnx"]
    assert run["seconds"] < 1.0, run
    assert run["file"] in run["stderr"]
    assert "8.0 GiB" in run["stderr"]
    assert f"over the limit of {format_bytes(MAX_ONNX_BYTES)}" in run["stderr"]
    assert "--max-upload-mb" in run["stderr"]


# ---------------------------------------------------------------------------------------------
# the YAML reader


def test_aliases_within_the_limits_still_load() -> None:
    text = (
        "rungs:\n  - &rung {epochs: 2, size: [96, 128]}\n  - *rung\n"
        "base: &b {x: 1}\nmore: {<<: *b}\n"
    )
    data = load_yaml_text(text)
    assert data["rungs"] == [{"epochs": 2, "size": [96, 128]}] * 2
    assert data["more"] == {"x": 1}


def test_alias_bomb_is_refused_in_milliseconds_in_process() -> None:
    start = time.perf_counter()
    with pytest.raises(YAMLTooLargeError, match="once its aliases are expanded"):
        load_yaml_text(f"stages: {alias_bomb(12)}\n")
    assert time.perf_counter() - start < 0.5


def test_merge_key_bomb_is_refused() -> None:
    lines = ["k0: &k0 {" + ", ".join(f"f{i}: x" for i in range(9)) + "}"]
    lines += [f"k{i}: &k{i} {{<<: [" + ", ".join([f"*k{i - 1}"] * 9) + "]}" for i in range(1, 9)]
    with pytest.raises(YAMLTooLargeError):
        load_yaml_text("\n".join(lines) + "\n")


class _TwentyValues(BoundedSafeLoader):
    max_values = 20


@pytest.mark.parametrize(
    ("text", "fits"),
    [
        # 1 mapping + 1 key + 1 list + 17 items = 20 values
        ("k: [" + ", ".join(["1"] * 17) + "]", True),
        ("k: [" + ", ".join(["1"] * 18) + "]", False),
        # 1 + 1 + (1 list + 8 items) + 1 key + an alias counted as its 9 values = 21
        ("k: &a [" + ", ".join(["1"] * 8) + "]\nj: *a", False),
        ("k: &a [" + ", ".join(["1"] * 7) + "]\nj: *a", True),
    ],
)
def test_value_limit_counts_every_value_and_aliases_as_copies(text: str, fits: bool) -> None:
    if fits:
        assert yaml.load(text, Loader=_TwentyValues)
    else:
        with pytest.raises(YAMLTooLargeError, match="more than 20 values"):
            yaml.load(text, Loader=_TwentyValues)


def test_nesting_limit() -> None:
    fits = "[" * (MAX_YAML_DEPTH - 1) + "]" * (MAX_YAML_DEPTH - 1)
    assert load_yaml_text(f"k: {fits}")
    too_deep = "[" * 10_000 + "]" * 10_000
    with pytest.raises(YAMLTooLargeError, match=f"nested more than {MAX_YAML_DEPTH} deep"):
        load_yaml_text(f"k: {too_deep}")


def test_nesting_through_aliases_counts_too() -> None:
    half = MAX_YAML_DEPTH // 2 + 1
    text = f"a: &a {'[' * half}{']' * half}\nb: {'[' * half}*a{']' * half}\n"
    with pytest.raises(YAMLTooLargeError, match="nested more than"):
        load_yaml_text(text)


def test_oversize_yaml_is_refused_in_process(tmp_path: Path) -> None:
    path = sparse_file(tmp_path / "big.yaml", MAX_YAML_BYTES + 1)
    with pytest.raises(ConfigError, match=r"over the limit of 1\.0 MiB") as caught:
        load_config(path)
    assert str(path) in str(caught.value)
    assert f"({MAX_YAML_BYTES + 1} bytes)" in str(caught.value)


def test_yaml_errors_name_the_file_and_its_position(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML") as caught:
        load_config(path)
    assert f'in "{path}", line' in str(caught.value)


def test_unconvertible_scalar_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "digits.yaml"
    path.write_text("stem: {width: " + "9" * 5000 + "}\n")
    with pytest.raises(ConfigError, match="not valid YAML") as caught:
        load_config(path)
    assert str(path) in str(caught.value)


# ---------------------------------------------------------------------------------------------
# ONNX files


def test_onnx_limit_is_the_workers_upload_limit(tmp_path: Path) -> None:
    assert int(DEFAULT_MAX_UPLOAD_MB * 1024 * 1024) == MAX_ONNX_BYTES
    path = sparse_file(tmp_path / "model.onnx", MAX_ONNX_BYTES + 1)
    with pytest.raises(InvalidModelError, match="over the limit") as caught:
        read_onnx_bytes(path)
    assert str(path) in str(caught.value)
    small = tmp_path / "small.onnx"
    small.write_bytes(b"\x08\x07")
    assert read_onnx_bytes(small) == b"\x08\x07"
    with pytest.raises(InvalidModelError, match="over the limit of 1 bytes"):
        read_onnx_bytes(small, max_bytes=1)


def test_a_file_that_does_not_report_its_size_is_still_bounded() -> None:
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    assert Path("/dev/zero").stat().st_size == 0  # it claims nothing and never ends
    with pytest.raises(FileTooLargeError, match="over the limit of 1.0 KiB"):
        read_bytes_bounded("/dev/zero", 1024)
    with pytest.raises(InvalidModelError, match="/dev/zero is not a regular file"):
        read_onnx_bytes("/dev/zero")


# ---------------------------------------------------------------------------------------------
# images


def test_png_claiming_a_huge_size_is_refused_before_decoding(tmp_path: Path) -> None:
    for side in (9000, 100_000):  # ours alone, then Pillow's own ceiling as well
        path = tmp_path / f"claims_{side}.png"
        path.write_bytes(png_header(side, side))
        assert path.stat().st_size < 100
        with pytest.raises(FileTooLargeError, match=f"over the limit of {MAX_IMAGE_PIXELS}"):
            open_image(path)


def test_image_past_the_byte_limit_is_refused(tmp_path: Path) -> None:
    path = sparse_file(tmp_path / "huge.png", MAX_IMAGE_BYTES + 1)
    with pytest.raises(FileTooLargeError, match=r"over the limit of 256\.0 MiB") as caught:
        open_image(path)
    assert str(path) in str(caught.value)


def test_an_ordinary_image_opens(tmp_path: Path) -> None:
    path = tmp_path / "ok.png"
    Image.new("RGB", (32, 24)).save(path)
    with open_image(path) as image:
        image.load()
        assert image.size == (32, 24)


def _segnet_root(root: Path, frame: bytes) -> Path:
    (root / "train").mkdir(parents=True)
    (root / "trainannot").mkdir()
    (root / "train" / "f0.png").write_bytes(frame)
    Image.new("L", (16, 12)).save(root / "trainannot" / "f0.png")
    return root


def test_camvid_frame_claiming_a_huge_size_is_a_data_error(tmp_path: Path) -> None:
    root = _segnet_root(tmp_path / "camvid", png_header(100_000, 100_000))
    frame = root / "train" / "f0.png"
    with pytest.raises(DataError, match="pixels") as caught:
        CamVid(root, "train")[0]
    assert str(frame) in str(caught.value)


def test_camvid_label_past_the_byte_limit_is_a_data_error(tmp_path: Path) -> None:
    buffer = tmp_path / "frame.png"
    Image.new("RGB", (16, 12)).save(buffer)
    root = _segnet_root(tmp_path / "camvid", buffer.read_bytes())
    label = sparse_file(root / "trainannot" / "f0.png", MAX_IMAGE_BYTES + 1)
    with pytest.raises(DataError, match="over the limit") as caught:
        CamVid(root, "train")[0]
    assert str(label) in str(caught.value)


def test_predict_refuses_a_huge_image_before_loading_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "street.png"
    path.write_bytes(png_header(9000, 9000))
    with pytest.raises(ValueError, match="over the limit") as caught:
        predict_images(tmp_path / "no-such.pt", [path], tmp_path / "out")
    assert str(path) in str(caught.value)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# long values in messages


@pytest.mark.parametrize(
    ("value", "extent"),
    [
        ("x" * 100_000, "(100000 characters)"),
        (list(range(5000)), "(5000 items)"),
        ({f"key{i}": i for i in range(300)}, "(300 keys)"),
        ([["y" * 1000]], "(1 item)"),
    ],
    ids=["string", "list", "mapping", "nested"],
)
def test_long_values_are_shortened(value: object, extent: str) -> None:
    text = describe(value)
    assert len(text) < DESCRIBE_LIMIT + 30
    assert text.endswith(f"... {extent}")
    whole = repr(value) if isinstance(value, str) else str(value)
    assert text.startswith(whole[: DESCRIBE_LIMIT - 3])


def test_short_values_read_as_before() -> None:
    for value in ("reu", 3, 2.5, None, True, [1, "a", (2,)], {"a": [1, 2]}, (1,), ()):
        assert describe(value) == (repr(value) if isinstance(value, str) else str(value))


def test_describing_an_expanded_bomb_is_cheap() -> None:
    value: object = ["lol"] * 9
    for _ in range(12):  # 9**13 strings, if it were ever rendered whole
        value = [value] * 9
    start = time.perf_counter()
    text = describe(value)
    assert time.perf_counter() - start < 0.1
    assert text.endswith("... (9 items)")


def test_config_errors_shorten_long_values_and_keys() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"stages": "s" * 100_000, "k" * 50_000: 1, "stem": {"width": 10**4000}})
    message = str(caught.value)
    assert len(message) < MESSAGE_LIMIT
    assert "... (100000 characters)" in message
    assert "... (50000 characters)" in message
    assert "... (4001 characters)" in message
