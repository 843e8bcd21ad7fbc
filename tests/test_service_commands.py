"""Commands from the API thread run on the service thread; no broker is involved here."""

from __future__ import annotations

import threading

import pytest

from connectors.kafka import KafkaPythonConnector
from stream.config import Config
from stream.errors import NotOwnedError, SnapshotError
from stream.service import Service


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


def _serve_one(service: Service, command) -> tuple[str, str | None]:
    """Submit ``command`` from another thread while this one runs the service's commands: what
    the caller got (the result, or the error's name), and what the service thread raised."""
    outcome: list[str] = []

    def call() -> None:
        try:
            outcome.append(service.submit(command, timeout=5))
        except Exception as error:
            outcome.append(type(error).__name__)

    caller = threading.Thread(target=call)
    caller.start()
    raised = None
    try:
        while caller.is_alive():
            service._run_commands()
    except Exception as error:
        raised = type(error).__name__
    caller.join()
    return outcome[0], raised


def test_request_errors_go_back_to_the_caller_and_infrastructure_errors_also_stop_the_loop(tmp_path):
    service = _service(tmp_path)

    def unknown_snapshot(svc):
        raise SnapshotError("no snapshot 'x'")

    def disk_full(svc):
        raise OSError(28, "No space left on device")

    assert _serve_one(service, unknown_snapshot) == ("SnapshotError", None)
    assert _serve_one(service, disk_full) == ("OSError", "OSError")


def test_a_request_for_a_partition_not_owned_is_the_callers_fault_but_a_key_error_is_a_bug(tmp_path):
    service = _service(tmp_path)
    # Not connected, it owns nothing: the caller is told and the loop goes on.
    not_owned = _serve_one(service, lambda svc: svc.rollback("events-9", "00000001-drift"))
    assert not_owned == ("NotOwnedError", None) and not issubclass(NotOwnedError, KeyError)
    assert _serve_one(service, lambda svc: {}["a bug"]) == ("KeyError", "KeyError")
