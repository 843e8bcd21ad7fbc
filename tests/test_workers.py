"""``stream serve --workers N``: the supervisor's policy on trivial workers (no broker), then N
service workers in one group on a real broker, through a SIGKILL of one of them and a SIGTERM."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from connectors import BACKENDS
from stream.cli import app
from stream.supervisor import Supervisor, Worker, worker_count
from tests.kafka_helpers import (
    PROJECT_ROOT,
    ServiceProcess,
    drifting_events,
    duplicates,
    publish,
    read_topic,
    service_config,
    wait_for_records,
    wait_until,
)

# A worker stand-in. argv: what it does, and a folder where it notes each start ("start <pid>") and
# how it stopped ("stopped <signal>") in <folder>/<WORKER_ID>.
WORKER = textwrap.dedent("""
    import os, pathlib, signal, sys, time
    mode, folder = sys.argv[1], pathlib.Path(sys.argv[2])
    notes = folder / os.environ["WORKER_ID"]
    def note(line):
        with open(notes, "a") as handle:
            handle.write(line + "\\n")
    starts = notes.read_text().count("start") if notes.exists() else 0
    def stop(signum, frame):
        note(f"stopped {signal.Signals(signum).name}")
        sys.exit(0)
    signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "ignore-stop" else stop)
    signal.signal(signal.SIGINT, stop)
    note(f"start {os.getpid()} {time.monotonic()}")
    if mode == "crash-once" and starts == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "crash":
        sys.exit(3)
    if mode in ("config-error", "exit-0"):
        sys.exit(2 if mode == "config-error" else 0)
    while True:
        time.sleep(0.05)
""")


def _worker(instance_id: str, mode: str, folder: Path) -> Worker:
    return Worker(instance_id, [sys.executable, "-c", WORKER, mode, str(folder)], {"WORKER_ID": instance_id})


def _notes(folder: Path, instance_id: str) -> list[str]:
    path = folder / instance_id
    return path.read_text().splitlines() if path.exists() else []


def _starts(folder: Path, instance_id: str) -> list[tuple[int, float]]:
    return [
        (int(pid), float(at))
        for _, pid, at in (n.split() for n in _notes(folder, instance_id) if n.startswith("start"))
    ]


def _run_in_background(supervisor: Supervisor) -> tuple[threading.Thread, list[int]]:
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(supervisor.run()))
    thread.start()
    return thread, codes


def test_a_worker_killed_by_a_signal_is_restarted_under_its_own_id_and_one_that_exits_0_is_not(
    tmp_path, caplog
):
    caplog.set_level("INFO", "stream.supervisor")
    supervisor = Supervisor(
        [_worker("box-w0", "exit-0", tmp_path), _worker("box-w1", "crash-once", tmp_path)],
        backoff_seconds=0.05,
    )
    started = time.monotonic()
    # crash-once serves on after its restart: stopped once it has started twice.
    thread, codes = _run_in_background(supervisor)
    wait_until(lambda: len(_starts(tmp_path, "box-w1")) == 2, 30, "box-w1 was not restarted")
    supervisor.request_stop()
    thread.join(60)
    assert codes == [0]
    assert supervisor.restarts == {"box-w0": 0, "box-w1": 1}
    assert len(_starts(tmp_path, "box-w0")) == 1  # exited 0 by itself: left stopped
    (first, _), (second, _) = _starts(tmp_path, "box-w1")
    assert first != second and _notes(tmp_path, "box-w1")[-1] == "stopped SIGTERM"
    assert time.monotonic() - started < 30
    log = caplog.text
    assert (
        f"worker box-w1 (pid {first}) was killed by SIGKILL; restarting it in 0.1 s with the same id" in log
    )
    assert f"worker box-w1 started (pid {second}, restart 1)" in log
    assert "worker box-w0 (pid" in log and "exited with code 0 by itself; it is not restarted" in log


def test_a_crash_loop_backs_off_doubling_then_stops_every_worker_and_exits_1(tmp_path, caplog):
    supervisor = Supervisor(
        [_worker("box-w0", "serve", tmp_path), _worker("box-w1", "crash", tmp_path)],
        backoff_seconds=0.2,
        max_restarts=3,
        window_seconds=120,
    )
    assert supervisor.run() == 1
    starts = [at for _, at in _starts(tmp_path, "box-w1")]
    assert len(starts) == 4  # the first start and three restarts; the fourth crash ends it
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert [gap >= 0.2 * 2**n for n, gap in enumerate(gaps)] == [True, True, True], gaps
    assert "after 3 restarts in 120 s: a crash loop; stopping every worker" in caplog.text
    # The healthy worker was stopped gracefully, not restarted.
    assert len(_starts(tmp_path, "box-w0")) == 1 and _notes(tmp_path, "box-w0")[-1] == "stopped SIGTERM"


def test_the_backoff_doubles_to_its_cap_and_only_restarts_within_the_window_count():
    def policy(crashes: list[float], **limits: float) -> list[float | str]:
        """Each crash's outcome at those (monotonic) times: the restart delay, or the exit code."""
        supervisor = Supervisor([Worker("box-w0", ["true"])], backoff_seconds=1, **limits)  # type: ignore[arg-type]
        slot = supervisor._slots[0]
        outcomes: list[float | str] = []
        for now in crashes:
            code = supervisor._exited(slot, -9, now)
            outcomes.append(f"exit {code}" if code is not None else slot.restart_at - now)  # type: ignore[operator]
        return outcomes

    assert policy([0, 1, 2, 3, 4, 5], max_backoff_seconds=4, max_restarts=10) == [1, 2, 4, 4, 4, 4]
    # Two restarts in 60 s at most: a third crash inside the window ends it, one after does not.
    assert policy([0, 10, 20], max_restarts=2, window_seconds=60) == [1, 2, "exit 1"]
    assert policy([0, 10, 65, 71, 72], max_restarts=2, window_seconds=60) == [1, 2, 2, 2, "exit 1"]


def test_a_config_error_of_one_worker_stops_the_others_and_exits_2(tmp_path):
    supervisor = Supervisor(
        [_worker("box-w0", "serve", tmp_path), _worker("box-w1", "config-error", tmp_path)]
    )
    started = time.monotonic()
    assert supervisor.run() == 2
    assert time.monotonic() - started < 30
    assert supervisor.restarts == {"box-w0": 0, "box-w1": 0}
    assert _notes(tmp_path, "box-w0")[-1] == "stopped SIGTERM"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_is_forwarded_to_every_worker_and_waited_for(tmp_path, signum):
    workers = ["box-w0", "box-w1", "box-w2"]
    supervisor = Supervisor([_worker(name, "serve", tmp_path) for name in workers])

    def signal_once_all_started() -> None:
        wait_until(lambda: all(_starts(tmp_path, name) for name in workers), 30, "not all started")
        os.kill(os.getpid(), signum)  # to this process: the supervisor's handler, not the workers

    sender = threading.Thread(target=signal_once_all_started)
    sender.start()
    assert supervisor.run() == 0  # on this (the main) thread: it installs the signal handlers
    sender.join()
    assert [_notes(tmp_path, name)[-1] for name in workers] == [f"stopped {signum.name}"] * 3
    assert signal.getsignal(signum) is not supervisor.request_stop  # the previous handler is back


def test_a_worker_that_does_not_stop_in_time_is_killed_and_the_exit_is_1(tmp_path):
    supervisor = Supervisor(
        [_worker("box-w0", "ignore-stop", tmp_path), _worker("box-w1", "serve", tmp_path)], stop_seconds=1.0
    )
    thread, codes = _run_in_background(supervisor)
    wait_until(lambda: _starts(tmp_path, "box-w0") and _starts(tmp_path, "box-w1"), 30, "not started")
    stopping = time.monotonic()
    supervisor.request_stop()
    thread.join(60)
    assert codes == [1] and time.monotonic() - stopping < 20
    assert _notes(tmp_path, "box-w1")[-1] == "stopped SIGTERM"
    ((pid, _),) = _starts(tmp_path, "box-w0")
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_workers_are_stopped_when_the_supervisor_is_killed(tmp_path):
    program = textwrap.dedent(f"""
        import sys
        from stream.supervisor import Supervisor, Worker
        command = [sys.executable, "-c", {WORKER!r}, "serve", {str(tmp_path)!r}]
        Supervisor([Worker(f"box-w{{i}}", command, {{"WORKER_ID": f"box-w{{i}}"}}) for i in range(2)]).run()
    """)
    supervisor = subprocess.Popen([sys.executable, "-c", program], cwd=PROJECT_ROOT)
    try:
        wait_until(lambda: all(_starts(tmp_path, f"box-w{i}") for i in range(2)), 30, "not started")
    finally:
        supervisor.kill()
        supervisor.wait(30)
    # Each worker got SIGTERM from the kernel as its parent died, and stopped as it does on one.
    wait_until(
        lambda: all(_notes(tmp_path, f"box-w{i}")[-1] == "stopped SIGTERM" for i in range(2)),
        30,
        "a worker outlived its supervisor",
    )


def test_worker_output_is_prefixed_with_its_instance_id(tmp_path, capsys):
    say = [sys.executable, "-c", "import sys; print('to stdout'); print('to stderr', file=sys.stderr)"]
    assert Supervisor([Worker("box-w0", say)]).run() == 0
    assert sorted(capsys.readouterr().err.splitlines()) == ["[box-w0] to stderr", "[box-w0] to stdout"]


def test_worker_count_takes_a_positive_number_or_auto():
    assert worker_count("auto") == len(os.sched_getaffinity(0))
    assert worker_count("2") == 2
    for wrong in ("0", "-1", "two", ""):
        with pytest.raises(ValueError, match="at least 1, or auto"):
            worker_count(wrong)
    refused = CliRunner().invoke(app, ["serve", "--workers", "0"])
    assert refused.exit_code == 2 and "--workers" in refused.output


def test_workers_needing_ports_past_65535_are_refused_before_anything_starts(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"api:\n  port: 65535\nsnapshots:\n  directory: {tmp_path / 'snapshots'}\n")
    result = CliRunner().invoke(app, ["serve", "-c", str(config), "--workers", "2", "--instance-id", "ports"])
    assert result.exit_code == 2, result.output
    assert "api.port: 2 workers serve the API on ports 65535 to 65536" in result.output


# -- on the broker ---------------------------------------------------------------------------------


class SupervisedService(ServiceProcess):
    """``stream serve --workers N`` as a child process."""

    def __init__(self, workdir: Path, config: dict, workers: int, instance_id: str) -> None:
        super().__init__(workdir, config, instance_id, name=f"{instance_id}-supervisor")
        self.workers = workers

    def start(self) -> SupervisedService:
        env = {key: value for key, value in os.environ.items() if not key.startswith("STREAM__")}
        env["PYTHONPATH"] = str(PROJECT_ROOT)
        command = [sys.executable, "-m", "stream", "serve", "-c", str(self.config_path),
                   "--instance-id", str(self.instance_id), "--workers", str(self.workers)]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            cwd=self.workdir)  # fmt: skip
        return self

    def pids(self, instance_id: str) -> list[int]:
        """Every process the supervisor started for this worker, in order."""
        return [int(pid) for pid in re.findall(rf"worker {instance_id} started \(pid (\d+)", self.log())]

    def assignments(self) -> dict[str, list[str]]:
        """Each worker's latest assignment, from its own (prefixed) log lines."""
        found = re.findall(r"^\[(\S+)\] .* assignment: (\[.*\])$", self.log(), re.MULTILINE)
        return {worker: json.loads(partitions.replace("'", '"')) for worker, partitions in found}


@pytest.mark.kafka
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_two_workers_share_four_partitions_and_survive_a_sigkill_without_loss_or_duplicates(
    kafka, tmp_path, new_topic, backend
):
    input_topic = new_topic(partitions=4, prefix="events")
    config = service_config(
        kafka.bootstrap_servers, tmp_path, kafka={"input_topic": input_topic, "backend": backend}
    )
    topics = config["kafka"]
    events = drifting_events(4_000, keys=40)
    values = [json.dumps(e).encode() for e in events]
    keys = [e["key"].encode() for e in events]
    publish(kafka.bootstrap_servers, input_topic, values[:3_000], keys[:3_000])
    service = SupervisedService(tmp_path, config, 2, "box").start()
    try:
        # Two members of the group, each with its own id, sharing the four partitions.
        partitions = [f"{input_topic}:{p}" for p in range(4)]

        def shared() -> bool:
            latest = service.assignments()
            owned = [*latest.get("box-w0", []), *latest.get("box-w1", [])]
            return len(latest) == 2 and all(latest.values()) and sorted(owned) == partitions

        wait_until(shared, 120, "the two workers did not share the partitions")
        for worker in ("box-w0", "box-w1"):
            assert f"[{worker}] " in service.log() and f"starting instance={worker} " in service.log()
        wait_for_records(kafka.bootstrap_servers, topics["predictions_topic"], 1_000, log=service.log)

        (killed,) = service.pids("box-w1")
        os.kill(killed, signal.SIGKILL)
        wait_until(lambda: len(service.pids("box-w1")) == 2, 60, f"box-w1 not restarted:\n{service.log()}")
        wait_until(
            lambda: service.log().count("starting instance=box-w1 ") == 2,
            60,
            f"the restarted worker did not start as box-w1:\n{service.log()}",
        )
        assert service.alive() and len(service.pids("box-w0")) == 1
        publish(kafka.bootstrap_servers, input_topic, values[3_000:], keys[3_000:])
        wait_for_records(
            kafka.bootstrap_servers, topics["predictions_topic"], 4_000, timeout=240, log=service.log
        )
    finally:
        stopping = time.monotonic()
        code = service.stop(timeout=180)
    assert code == 0, service.log()[-6000:]
    assert time.monotonic() - stopping < 180
    log = service.log()
    assert f"worker box-w1 (pid {killed}) was killed by SIGKILL; restarting it" in log
    for worker, pid in (("box-w0", service.pids("box-w0")[0]), ("box-w1", service.pids("box-w1")[1])):
        assert f"worker {worker} (pid {pid}) stopped: exited with code 0" in log
        assert not Path(f"/proc/{pid}").exists()
    predictions = read_topic(kafka.bootstrap_servers, topics["predictions_topic"], 4_000)
    assert duplicates([p["id"] for p in predictions]) == {}
    assert sorted(p["id"] for p in predictions) == sorted(e["id"] for e in events)
