"""Every core: ``stream serve --workers N`` runs N service processes under one supervisor.

One service process uses one core (the model, the JSON and the client's Python side all hold the
interpreter's lock). With ``--workers N`` the ``serve`` process becomes a :class:`Supervisor` of N
worker processes, each a plain ``stream serve --workers 1`` in the same consumer group with its
own stable instance id ``<base>-w<i>`` (:func:`plan_workers`), which Kafka's static membership and
the transactional id rest on. The supervisor:

- forwards SIGTERM and SIGINT to every worker and waits for their graceful stop (shutdown
  snapshot, final commit) up to ``stop_seconds``, then SIGKILLs what is left; it exits 0 if every
  worker stopped cleanly, else 1;
- restarts a worker that died (killed by a signal, or an exit code other than 0 and 2) under the
  same id: the group takes it back without a rebalance and its transactional id fences the open
  transaction of the dead one. The restart waits ``backoff_seconds``, doubled for each restart of
  that worker in the last ``window_seconds`` (up to ``max_backoff_seconds``); a worker that dies
  again after ``max_restarts`` restarts in the window is a crash loop: everything stops, exit 1;
- stops everything and exits 2 when a worker exits 2, a configuration error (an id another
  process on this host holds, say): a restart would fail the same way;
- leaves stopped a worker that exited 0 by itself (someone stopped that one on purpose);
- prefixes each line a worker writes with ``[<instance id>]`` and logs every start, exit and
  restart with the instance id. On Linux a worker gets SIGTERM when the supervisor dies, however
  it dies, so no worker is left holding its id.

>>> import sys, tempfile
>>> from pathlib import Path
>>> marker = Path(tempfile.mkdtemp()) / "crashed-once"
>>> crash_once = (  # killed by a signal the first time, a clean exit after its restart
...     "import os, pathlib, signal; marker = pathlib.Path(os.environ['MARKER']);"
...     "print('run', 2 if marker.exists() else 1, flush=True);"
...     "marker.exists() or (marker.touch(), os.kill(os.getpid(), signal.SIGKILL))"
... )
>>> supervisor = Supervisor(
...     [Worker("box-w0", [sys.executable, "-c", crash_once], {"MARKER": str(marker)})],
...     backoff_seconds=0.05, output=sys.stdout,
... )
>>> supervisor.run()
[box-w0] run 1
[box-w0] run 2
0
>>> supervisor.restarts
{'box-w0': 1}
>>> Supervisor([Worker("box-w1", [sys.executable, "-c", "raise SystemExit(2)"])]).run()
2
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, TextIO

from stream.errors import ConfigError

logger = logging.getLogger(__name__)

CONFIG_ERROR_EXIT = 2  # what ``stream serve`` exits with for a configuration it cannot use
STOP_SECONDS = 60.0
BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0
MAX_RESTARTS = 5
WINDOW_SECONDS = 300.0
MAX_PORT = 65535


@dataclass(frozen=True)
class Worker:
    """What to run for one worker: its instance id, its command, and environment variables set
    for it on top of the supervisor's own."""

    instance_id: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)


def worker_count(value: str | int) -> int:
    """``--workers``: a positive number, or ``auto`` for one per core this process may run on.

    >>> worker_count("3"), worker_count(1), worker_count("auto") >= 1
    (3, 1, True)
    >>> worker_count("0")
    Traceback (most recent call last):
    ...
    ValueError: give a number of workers of at least 1, or auto (one per core), not '0'
    """
    if isinstance(value, str) and value.strip().lower() == "auto":
        try:
            return len(os.sched_getaffinity(0)) or 1
        except AttributeError:  # not on Linux
            return os.cpu_count() or 1
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"give a number of workers of at least 1, or auto (one per core), not {value!r}")
    return count


def plan_workers(
    base_id: str, count: int, serve_command: Sequence[str], api_port: int | None
) -> list[Worker]:
    """The workers of ``stream serve --workers count``: worker ``i`` is ``<base_id>-w<i>``, runs
    ``serve_command`` with that instance id and ``--workers 1``, and with ``api_port`` (the API
    enabled) serves its API on ``api_port + i`` (``api_port`` 0: each on a free port).

    >>> workers = plan_workers("box", 2, ["stream", "serve"], 8000)
    >>> [(w.instance_id, w.command[2:], w.env) for w in workers]  # doctest: +NORMALIZE_WHITESPACE
    [('box-w0', ['--instance-id', 'box-w0', '--workers', '1'], {'STREAM__API__PORT': '8000'}),
     ('box-w1', ['--instance-id', 'box-w1', '--workers', '1'], {'STREAM__API__PORT': '8001'})]
    >>> plan_workers("box", 2, ["stream", "serve"], 65535)
    Traceback (most recent call last):
    ...
    stream.errors.ConfigError: api.port: 2 workers serve the API on ports 65535 to 65536, ...
    """
    if api_port and api_port + count - 1 > MAX_PORT:
        raise ConfigError(
            f"api.port: {count} workers serve the API on ports {api_port} to {api_port + count - 1}, "
            f"past {MAX_PORT}; pick a lower api.port, or 0 for free ports"
        )
    workers = []
    for index in range(count):
        instance_id = f"{base_id}-w{index}"
        env = {} if api_port is None else {"STREAM__API__PORT": str(api_port + index if api_port else 0)}
        command = [*serve_command, "--instance-id", instance_id, "--workers", "1"]
        workers.append(Worker(instance_id, command, env))
    return workers


@dataclass
class _Slot:
    """A worker and its current process, restarts and pending restart."""

    worker: Worker
    process: subprocess.Popen[bytes] | None = None
    restarted_at: list[float] = field(default_factory=list)  # monotonic times, in the window
    restart_at: float | None = None  # a restart is due at this monotonic time
    exit_code: int | None = None  # the last process's


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _parent_death_signal() -> Callable[[], None] | None:
    """A function for ``preexec_fn`` that has the child sent SIGTERM when its parent dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    set_death_signal = 1  # PR_SET_PDEATHSIG

    def die_with_parent() -> None:  # in the child, between fork and exec
        prctl(set_death_signal, signal.SIGTERM)
        if os.getppid() != parent:  # the supervisor died before the line above
            os._exit(1)

    return die_with_parent


class Supervisor:
    """Runs ``workers`` as processes until it is stopped; see the module's description."""

    def __init__(
        self,
        workers: Sequence[Worker],
        *,
        stop_seconds: float = STOP_SECONDS,
        backoff_seconds: float = BACKOFF_SECONDS,
        max_backoff_seconds: float = MAX_BACKOFF_SECONDS,
        max_restarts: int = MAX_RESTARTS,
        window_seconds: float = WINDOW_SECONDS,
        output: TextIO | None = None,
        poll_seconds: float = 0.1,
    ) -> None:
        """``output``: where the workers' prefixed lines go (default: this process's stderr)."""
        if len({worker.instance_id for worker in workers}) != len(workers):
            raise ValueError("every worker needs its own instance id")
        self._slots = [_Slot(worker) for worker in workers]
        self.stop_seconds = stop_seconds
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.max_restarts = max_restarts
        self.window_seconds = window_seconds
        self.poll_seconds = poll_seconds
        self._output = output
        self._output_lock = threading.Lock()
        self._signal: int | None = None  # the stop signal received, if any
        self._preexec = _parent_death_signal()
        self._pumps: list[threading.Thread] = []  # one per process started, copying its output
        self.restarts: dict[str, int] = {worker.instance_id: 0 for worker in workers}

    # -- the public side ---------------------------------------------------------------------

    def run(self) -> int:
        """Start the workers and supervise them until a stop signal (0 if every worker then
        stopped cleanly, else 1), a worker's configuration error (2), a crash loop (1), or every
        worker having exited 0 by itself (0)."""
        previous = self._install_signal_handlers()
        try:
            for slot in self._slots:
                self._start(slot)
            code = self._supervise()
            stopped_cleanly = self._stop_all()
            if code == 0 and self._signal is not None and not stopped_cleanly:
                code = 1
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            for slot in self._slots:
                self._stop_process(slot, signal.SIGKILL)  # only if an error got us here
            for pump in self._pumps:
                pump.join(5.0)  # the last lines of each worker, before the caller goes on
        return code

    def request_stop(self, signum: int = signal.SIGTERM, *_: Any) -> None:
        """Stop every worker with ``signum`` (a signal handler, or a call from another thread)."""
        if self._signal is None:
            self._signal = signum

    def pids(self) -> dict[str, int]:
        """The process id of each running worker, by instance id."""
        return {slot.worker.instance_id: slot.process.pid for slot in self._slots if slot.process}

    # -- the loop ----------------------------------------------------------------------------

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}  # only the main thread may; request_stop() still works
        previous = {}
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, self.request_stop)
        return previous

    def _supervise(self) -> int:
        while self._signal is None:
            now = time.monotonic()
            for slot in self._slots:
                if slot.process is not None and (code := slot.process.poll()) is not None:
                    outcome = self._exited(slot, code, now)
                    if outcome is not None:
                        return outcome
                if slot.restart_at is not None and now >= slot.restart_at and self._signal is None:
                    self.restarts[slot.worker.instance_id] += 1
                    self._start(slot)
            if all(slot.process is None and slot.restart_at is None for slot in self._slots):
                logger.info("every worker exited by itself; stopping")
                return 0
            time.sleep(self.poll_seconds)
        logger.info("%s: stopping %d workers", signal.Signals(self._signal).name, len(self.pids()))
        return 0

    def _start(self, slot: _Slot) -> None:
        worker = slot.worker
        env = {key: value for key, value in os.environ.items()
               if key.upper() not in {name.upper() for name in worker.env}}  # fmt: skip
        env.update(worker.env)
        slot.restart_at = None
        slot.process = subprocess.Popen(
            worker.command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=self._preexec,  # a prctl call only: takes no lock another thread may hold
        )
        restart = self.restarts[worker.instance_id]
        logger.info(
            "worker %s started (pid %d%s)", worker.instance_id, slot.process.pid,
            f", restart {restart}" if restart else "",
        )  # fmt: skip
        assert slot.process.stdout is not None
        pump = threading.Thread(
            target=self._pump, args=(worker.instance_id, slot.process.stdout), daemon=True,
            name=f"output of {worker.instance_id}",
        )  # fmt: skip
        pump.start()
        self._pumps.append(pump)

    def _pump(self, instance_id: str, stream: IO[bytes]) -> None:
        """Copy a worker's output line by line, each prefixed with its instance id."""
        prefix = f"[{instance_id}] "
        with stream:
            for line in iter(stream.readline, b""):
                text = prefix + line.decode(errors="replace")
                if not text.endswith("\n"):
                    text += "\n"
                with self._output_lock:
                    output = self._output or sys.stderr
                    try:
                        output.write(text)
                        output.flush()
                    except (OSError, ValueError):  # our own output is gone: keep draining the pipe
                        pass

    def _exited(self, slot: _Slot, code: int, now: float) -> int | None:
        """Deal with a worker's exit; the supervisor's exit code if everything must stop."""
        worker, pid = slot.worker, slot.process.pid if slot.process else -1
        slot.process, slot.exit_code = None, code
        what = f"worker {worker.instance_id} (pid {pid}) {_describe(code)}"
        if code == 0:
            logger.warning("%s by itself; it is not restarted", what)
            return None
        if code == CONFIG_ERROR_EXIT:
            logger.error("%s: a configuration error (see its log); stopping every worker", what)
            return CONFIG_ERROR_EXIT
        recent = [at for at in slot.restarted_at if now - at < self.window_seconds]
        if len(recent) >= self.max_restarts:
            logger.error(
                "%s after %d restarts in %.0f s: a crash loop; stopping every worker",
                what, len(recent), self.window_seconds,
            )  # fmt: skip
            return 1
        delay = min(self.backoff_seconds * 2 ** len(recent), self.max_backoff_seconds)
        slot.restarted_at = [*recent, now]
        slot.restart_at = now + delay
        logger.warning(
            "%s; restarting it in %.1f s with the same id (restart %d of at most %d in %.0f s)",
            what, delay, len(slot.restarted_at), self.max_restarts, self.window_seconds,
        )  # fmt: skip
        return None

    def _stop_all(self) -> bool:
        """Signal every running worker, wait for them until the deadline, then SIGKILL the
        rest; True if each stopped by itself with exit code 0."""
        signum = self._signal or signal.SIGTERM
        running = [slot for slot in self._slots if slot.process is not None]
        for slot in self._slots:
            slot.restart_at = None
        for slot in running:
            self._stop_process(slot, signum)
        deadline = time.monotonic() + self.stop_seconds
        clean = True
        for slot in running:
            assert slot.process is not None
            pid = slot.process.pid
            try:
                code = slot.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.error(
                    "worker %s (pid %d) did not stop within %.0f s; killing it",
                    slot.worker.instance_id, pid, self.stop_seconds,
                )  # fmt: skip
                slot.process.kill()
                code = slot.process.wait()
            slot.process, slot.exit_code = None, code
            clean &= code == 0
            log = logger.info if code == 0 else logger.warning
            log("worker %s (pid %d) stopped: %s", slot.worker.instance_id, pid, _describe(code))
        return clean

    @staticmethod
    def _stop_process(slot: _Slot, signum: int) -> None:
        if slot.process is None or slot.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            slot.process.send_signal(signum)
        if signum == signal.SIGKILL:
            slot.process.wait()
