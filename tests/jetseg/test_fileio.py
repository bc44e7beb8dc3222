"""The atomic writer: the target is whole before and after, whatever happens in between."""

from __future__ import annotations

import os
import stat

import pytest

from jetseg.fileio import atomic_write_bytes, atomic_write_text


def test_writes_bytes_text_and_streams_through_a_writer(tmp_path):
    target = tmp_path / "deep" / "er" / "file.bin"
    assert atomic_write_bytes(target, b"\x00\x01") == target
    assert target.read_bytes() == b"\x00\x01"
    atomic_write_bytes(target, lambda handle: handle.write(b"streamed"))
    assert target.read_bytes() == b"streamed"
    atomic_write_text(tmp_path / "t.json", '{"mIoU": "41.2 %"} \u00e9\n')
    assert (tmp_path / "t.json").read_text(encoding="utf-8") == '{"mIoU": "41.2 %"} \u00e9\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep", "t.json"]  # no temporary left


@pytest.mark.parametrize("failure", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, failure):
    target = tmp_path / "last.pt"
    target.write_bytes(b"old")

    def write_half_then_fail(handle):
        handle.write(b"half of the new")
        raise failure

    with pytest.raises(type(failure)):
        atomic_write_bytes(target, write_half_then_fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_the_new_file_gets_the_mode_a_plain_write_would(tmp_path):
    (tmp_path / "plain").write_bytes(b"x")
    atomic_write_bytes(tmp_path / "atomic", b"x")
    mode = stat.S_IMODE(os.stat(tmp_path / "atomic").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "plain").st_mode)
