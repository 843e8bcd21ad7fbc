"""Commands from the API thread run on the service thread; no broker is involved here."""

from __future__ import annotations

import threading

import pytest

from connectors.kafka import KafkaPythonConnector
from stream.config import Config
from stream.service import Service
from stream.snapshots import SnapshotError


def _service(tmp_path) -> Service:
    config = Config.model_validate({"snapshots": {"directory": str(tmp_path)}})
    return Service(config, KafkaPythonConnector("127.0.0.1:1"), "unit")


def test_a_command_that_timed_out_never_runs_later(tmp_path):
    service = _service(tmp_path)
    ran = []
    with pytest.raises(TimeoutError):
        service.submit(lambda svc: ran.append("rollback"), timeout=0.05)
    service._run_commands()  # the service thread comes round to it after the caller gave up
    assert ran == []


def test_a_command_runs_on_the_service_thread_and_returns_its_result(tmp_path):
    service = _service(tmp_path)
    threads = []
    worker = threading.Thread(
        target=lambda: threads.append(service.submit(lambda svc: threading.get_ident()))
    )
    worker.start()
    while not threads:
        service._run_commands()
    worker.join()
    assert threads == [threading.get_ident()]


def test_request_errors_go_back_to_the_caller_and_infrastructure_errors_also_stop_the_loop(tmp_path):
    service = _service(tmp_path)
    results = []

    def call(command):
        try:
            results.append(service.submit(command, timeout=5))
        except Exception as error:
            results.append(type(error).__name__)

    def unknown_snapshot(svc):
        raise SnapshotError("no snapshot 'x'")

    def disk_full(svc):
        raise OSError(28, "No space left on device")

    caller = threading.Thread(target=call, args=(unknown_snapshot,))
    caller.start()
    while caller.is_alive():
        service._run_commands()
    assert results == ["SnapshotError"]

    caller = threading.Thread(target=call, args=(disk_full,))
    caller.start()
    with pytest.raises(OSError):
        while caller.is_alive():
            service._run_commands()
    caller.join()
    assert results == ["SnapshotError", "OSError"]
