"""A local server that outlives the command that started it, found again through a state file.

The state file (JSON, mode 0600: it may hold keys) holds the server's pid and what a client needs
to reach it (``JvmServer.describe``). It is written once the server is ready and removed by
``stop``, or by ``read`` when its process is gone.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from local_servers.server import JvmServer, signal_group


def read(state_file: Path) -> dict | None:
    """The running detached server's state, or None (a stale state file is removed).

    >>> read(Path("/nonexistent/server.json")) is None
    True
    """
    if not state_file.exists():
        return None
    state = json.loads(state_file.read_text())
    try:
        os.kill(state["pid"], 0)
    except ProcessLookupError:
        state_file.unlink(missing_ok=True)
        return None
    return state


def start(state_file: Path, server: Callable[[], JvmServer]) -> dict:
    """Start ``server()`` unless the state file names a running one; return its state.

    The server's process leads a session of its own, so it goes on after this process exits.
    """
    state = read(state_file)
    if state is not None:
        return state
    started = server().start()
    assert started.process is not None
    state = {"pid": started.process.pid, **started.describe()}
    state_file.parent.mkdir(parents=True, exist_ok=True)
    with os.fdopen(os.open(state_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as file:
        json.dump(state, file)
    return state


def stop(state_file: Path, timeout: float) -> bool:
    """SIGTERM the detached server's process group, SIGKILL after ``timeout`` seconds; whether one ran."""
    state = read(state_file)
    if state is None:
        return False
    signal_group(state["pid"], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(state["pid"], 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        signal_group(state["pid"], signal.SIGKILL)
    state_file.unlink(missing_ok=True)
    return True
