"""What the local test servers (``kafka_local``, ``s3_local``) share: one way to run a server on the JVM.

Development tooling, shipped with the project like the two packages that use it:

- ``local_servers.maven``: the cache folder (``$VARIABLE``, else ``$XDG_CACHE_HOME/<name>``, else
  ``~/.cache/<name>``), the version pinned in a package's POM, and a fetch with Maven that fills a
  staging sibling and renames it into place, so an interrupted download is never trusted;
- ``local_servers.server``: ``free_port``, and ``JvmServer``, the life cycle both servers share
  (launch in a session of its own, wait for a ready line in the log and an open port, show the
  log's tail on failure, stop the process group, serve in the foreground until Ctrl-C or SIGTERM);
- ``local_servers.detached``: a server that outlives the command that started it, found again
  through a state file (pid and address, mode 0600: it may hold keys);
- ``local_servers.cli``: the ``fetch | run | start | stop | status`` command line.

Each package raises its own subclass of ``ServerError``.
"""

from __future__ import annotations


class ServerError(RuntimeError):
    """A local server could not be fetched or started (each package raises its own subclass)."""
