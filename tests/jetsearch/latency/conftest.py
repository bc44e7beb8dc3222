"""Fixtures of the latency tests: a tiny model and real worker processes on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from latency_cases import WorkerProcess, launch_worker


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Starts workers for one test and stops them afterwards."""
    started: list[WorkerProcess] = []

    def start(*args: str, **kwargs: Any) -> WorkerProcess:
        worker = launch_worker(tmp_path / "workers", *args, **kwargs)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture(scope="session")
def shared_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """One agx worker for the tests that do not disturb it."""
    worker = launch_worker(tmp_path_factory.mktemp("shared-worker"), "--timeout", "30")
    yield worker
    worker.stop()
