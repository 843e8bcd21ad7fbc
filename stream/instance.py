"""One instance id per process: what static group membership and the transactional id rest on.

Two consumers with the same ``group.instance.id`` fence each other (librdkafka then reports a
fatal error and stops consuming), and two producers with the same transactional id abort each
other's transactions. Kafka cannot tell a second process from a restart of the first, so the
service claims its id on its host before it connects: a lock file per group and id, held for the
life of the process (the operating system releases it when the process dies, however it dies).

The default id is the host name; a second process on the same host gets ``<host>-2``, a third
``<host>-3``, and each keeps its id across restarts as long as the others run. A configured id
that another process on this host holds is refused.

>>> import tempfile
>>> from pathlib import Path
>>> locks = Path(tempfile.mkdtemp())
>>> first = InstanceClaim.take("stream", "worker", locks)
>>> first.instance_id
'worker'
>>> InstanceClaim.take("stream", "worker", locks)
Traceback (most recent call last):
...
stream.errors.ConfigError: instance id 'worker' of group 'stream' is in use by process ...
>>> one, two = (InstanceClaim.take("stream", None, locks, host="box") for _ in range(2))
>>> one.instance_id, two.instance_id
('box', 'box-2')
>>> first.release()
>>> InstanceClaim.take("stream", "worker", locks).instance_id
'worker'
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import os
import socket
import tempfile
from pathlib import Path
from typing import IO

from stream.errors import ConfigError

LOCK_DIRECTORY = Path(tempfile.gettempdir()) / "stream-instances"


class InstanceClaim:
    """An instance id this process holds on this host until :meth:`release` or its exit."""

    def __init__(self, instance_id: str, lock: IO[str]) -> None:
        self.instance_id = instance_id
        self._lock = lock

    @classmethod
    def take(
        cls,
        group_id: str,
        configured: str | None,
        directory: Path = LOCK_DIRECTORY,
        host: str | None = None,
    ) -> InstanceClaim:
        """Claim ``configured``, or else the first free id of this host's name."""
        directory.mkdir(parents=True, exist_ok=True)
        if configured:
            claim = cls._try(group_id, configured, directory)
            if claim is None:
                holder = cls._lock_path(group_id, configured, directory).read_text().strip() or "?"
                raise ConfigError(
                    f"instance id {configured!r} of group {group_id!r} is in use by process {holder} "
                    "on this host; give each process its own service.instance_id (or --instance-id)"
                )
            return claim
        base = (host or socket.gethostname()).replace(".", "-") or "stream"
        for number in itertools.count(1):
            claim = cls._try(group_id, base if number == 1 else f"{base}-{number}", directory)
            if claim is not None:
                return claim
        raise AssertionError("unreachable")

    @staticmethod
    def _lock_path(group_id: str, instance_id: str, directory: Path) -> Path:
        # Hashed: group ids and instance ids may hold any character, a file name may not.
        digest = hashlib.sha256(f"{group_id}\0{instance_id}".encode()).hexdigest()[:32]
        return directory / f"{digest}.lock"

    @classmethod
    def _try(cls, group_id: str, instance_id: str, directory: Path) -> InstanceClaim | None:
        lock = open(cls._lock_path(group_id, instance_id, directory), "a+")  # noqa: SIM115 (held open)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            return None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        return cls(instance_id, lock)

    def release(self) -> None:
        self._lock.close()  # closing the file releases the lock
