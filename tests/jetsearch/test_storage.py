"""What a storage URL names, decided in one place, and the storages it opens."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest

from jetsearch.artifacts import dashboard_command, default_artifact_dir
from jetsearch.spec import StudyError
from jetsearch.storage import heartbeat_clock, locate_storage, open_storage


@pytest.mark.parametrize(
    ("url", "kind", "file"),
    [
        ("studies.log", "journal", "studies.log"),
        ("journal:runs/studies.log", "journal", "runs/studies.log"),
        ("/abs/studies.log", "journal", "/abs/studies.log"),
        ("sqlite:///s.db", "sqlite", "s.db"),
        ("sqlite:////abs/s.db?timeout=5", "sqlite", "/abs/s.db"),
        ("sqlite:///:memory:", "sqlite", None),
        ("sqlite://", "sqlite", None),
        ("postgresql://user@db:5432/studies", "server", None),
        ("postgresql+psycopg2://user:secret@db/studies", "server", None),
        ("mysql://db/studies", "server", None),
    ],
)
def test_every_storage_url_is_a_journal_sqlite_or_a_server(url: str, kind: str, file) -> None:
    location = locate_storage(url)
    assert (location.kind, location.file) == (kind, None if file is None else Path(file))
    assert location.is_server == (kind == "server")


def test_relative_files_become_absolute_for_other_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert locate_storage("studies.log").absolute().url == str(tmp_path / "studies.log")
    assert locate_storage("journal:a.log").absolute().url == f"journal:{tmp_path / 'a.log'}"
    assert locate_storage("sqlite:///s.db?x=1").absolute().url == f"sqlite:///{tmp_path}/s.db?x=1"
    for url in ("sqlite:////abs/s.db", "postgresql://u@db:5432/studies", "/abs/s.log"):
        assert locate_storage(url).absolute().url == url


def test_only_sqlite_refuses_several_processes() -> None:
    with pytest.raises(StudyError, match="SQLite storage cannot be shared safely"):
        locate_storage("sqlite:///s.db").check_processes(2)
    locate_storage("sqlite:///s.db").check_processes(1)
    locate_storage("studies.log").check_processes(8)
    locate_storage("postgresql://db/studies").check_processes(8)


def test_the_file_decides_the_artifacts_folder_and_the_dashboard_argument(tmp_path: Path) -> None:
    journal = tmp_path / "studies.log"
    assert default_artifact_dir(f"journal:{journal}") == tmp_path / "studies-artifacts"
    assert default_artifact_dir(f"sqlite:///{tmp_path}/s.db?x=1") == tmp_path / "s-artifacts"
    assert dashboard_command(f"journal:{journal}")[1] == str(journal)
    assert dashboard_command(f"sqlite:///{tmp_path}/s.db")[1] == f"sqlite:///{tmp_path}/s.db"


def test_a_journal_path_opens_a_journal_and_sqlite_an_rdb_storage(tmp_path: Path) -> None:
    journal = open_storage(f"journal:{tmp_path / 'new' / 'studies.log'}")
    assert isinstance(journal, optuna.storages.JournalStorage)
    assert (tmp_path / "new").is_dir()
    sqlite = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    assert isinstance(sqlite, optuna.storages.RDBStorage)
    assert sqlite.heartbeat_interval is None  # jetsearch's own recovery, no Optuna beat
    # A file's heartbeats are timed by this machine's clock (a PostgreSQL server's by its own:
    # tests/jetsearch/test_postgres.py).
    assert heartbeat_clock(journal) is time.time and heartbeat_clock(sqlite) is time.time


def test_a_journal_url_and_an_unknown_scheme_are_read_as_a_user_means_them(tmp_path):
    assert locate_storage(f"journal://{tmp_path}/s.log").file == tmp_path / "s.log"
    assert locate_storage("journal:runs/s.log").file == Path("runs/s.log")
    with pytest.raises(StudyError, match=r"storage 'foo://bar': no database driver for 'foo'"):
        open_storage("foo://bar")
