"""The command line of a local server package: ``fetch | run | start | stop | status``.

Each package says what its commands do; this module holds what they share: the commands and their
options (``--port`` for ``run`` and ``start``, ``--state-dir`` for the background server's state),
the messages, and the exit status (1 for a ``ServerError``, reported as ``<prog>: <error>``, and for
``status`` when no server runs).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from local_servers import ServerError

State = Mapping[str, Any]  # what ``detached.read`` returns


def main(
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str,
    noun: str,
    state_dir: Path,
    fetch: Callable[[], str],
    run: Callable[[argparse.Namespace], object],
    start: Callable[[argparse.Namespace], State],
    stop: Callable[[Path], bool],
    status: Callable[[Path], State | None],
    show: Callable[[State], str],
    options: Callable[[argparse.ArgumentParser], object] = lambda parser: None,
) -> int:
    """Parse ``argv`` (``sys.argv[1:]`` if None), run the command; return the exit status.

    ``fetch`` returns what to print; ``run`` serves in the foreground; ``start`` returns the state
    of the background server (started unless one runs); ``stop`` and ``status`` take the state
    folder (``state_dir`` by default) and return whether one was running and its state; ``show``
    prints a state for ``start`` and ``status``. ``options`` adds options to ``run`` and ``start``.

    >>> main(["stop", "--state-dir", "/nonexistent"], prog="x-local", description="", noun="server",
    ...      state_dir=Path("."), fetch=str, run=print, start=dict, stop=lambda state_dir: False,
    ...      status=lambda state_dir: None, show=str)
    no server was running
    0
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fetch", help=f"download the {noun}'s jars from Maven Central (once)")
    run_command = commands.add_parser("run", help=f"start a {noun} in the foreground until Ctrl-C")
    start_command = commands.add_parser("start", help=f"start a {noun} in the background")
    for sub in (run_command, start_command):
        sub.add_argument("--port", type=int, help="listening port (default: a free port)")
        options(sub)
    for sub in (
        start_command,
        commands.add_parser("stop", help=f"stop the background {noun}"),
        commands.add_parser("status", help=f"print how to reach the background {noun}"),
    ):
        sub.add_argument("--state-dir", type=Path, default=state_dir)
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            print(fetch())
        elif args.command == "run":
            run(args)
        elif args.command == "start":
            print(show(start(args)))
        elif args.command == "stop":
            print("stopped" if stop(args.state_dir) else f"no {noun} was running")
        elif args.command == "status":
            state = status(args.state_dir)
            print(show(state) if state else "not running")
            return 0 if state else 1
    except ServerError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 1
    return 0
