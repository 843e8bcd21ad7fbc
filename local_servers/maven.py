"""Jars from Maven Central, fetched once into a per-user cache.

A package pins what it needs in its own ``pom.xml``; ``fetch`` runs ``mvn`` on it into a temporary
sibling of the cache folder and renames that into place once complete, so an interrupted download
never leaves a folder that a later run would trust.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from local_servers import ServerError

COMPLETE = ".complete"  # the marker a filled folder holds (its content: the version)


def cache_dir(variable: str, name: str, environ: Mapping[str, str] = os.environ) -> Path:
    """``$variable`` if set and not empty, else ``$XDG_CACHE_HOME/<name>``, else ``~/.cache/<name>``.

    >>> cache_dir("STREAM_S3_CACHE", "stream-s3", {"STREAM_S3_CACHE": "/srv/jars"}).as_posix()
    '/srv/jars'
    >>> cache_dir("STREAM_S3_CACHE", "stream-s3", {"STREAM_S3_CACHE": "", "XDG_CACHE_HOME": "/c"}).as_posix()
    '/c/stream-s3'
    >>> cache_dir("STREAM_S3_CACHE", "stream-s3", {}) == Path.home() / ".cache" / "stream-s3"
    True
    """
    if environ.get(variable):
        return Path(environ[variable])
    xdg = environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / name


def pom_property(pom: Path, name: str, error: type[Exception] = ServerError) -> str:
    """The value of the property ``<name>`` in a POM: where a package pins the version it fetches."""
    tag = re.escape(name)
    match = re.search(rf"<{tag}>([^<]+)</{tag}>", pom.read_text())
    if not match:
        raise error(f"no <{name}> property in {pom}")
    return match.group(1)


def fetch(
    folder: Path,
    pom: Path,
    goal: Sequence[str],
    *,
    product: str,
    version: str,
    complete: Callable[[Path], bool],
    instead: str,
    error: type[Exception] = ServerError,
    quiet: bool = False,
) -> Path:
    """Fill ``folder`` once with what ``mvn <goal>`` copies for ``pom`` from Maven Central; return it.

    The folder counts as filled when it holds the ``.complete`` marker and ``complete(folder)``
    holds (the expected jars are there). It is filled in a temporary sibling, renamed into place
    only after Maven succeeded and ``complete`` accepts what it copied; a folder left without the
    marker is replaced. ``-C`` makes a checksum mismatch fail the download instead of warning.
    ``product`` and ``version`` name what is fetched in messages; ``instead`` is the way round
    Maven that a missing ``mvn`` suggests ("set ... to an existing server").
    """
    if _filled(folder, complete):
        return folder
    if shutil.which("mvn") is None:
        raise error(
            f"Maven (mvn) is needed once to fetch {product} from Maven Central; install it "
            f"(e.g. `apt-get install maven`) or {instead}"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{folder.name}-", dir=folder.parent))
    if not quiet:
        print(f"fetching {product} {version} from Maven Central into {folder} ...", file=sys.stderr)
    command = ["mvn", "-q", "-B", "-C", "-f", str(pom), *goal, f"-DoutputDirectory={staging}"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not complete(staging):
        shutil.rmtree(staging, ignore_errors=True)
        raise error(f"mvn could not fetch {product} {version}:\n{result.stdout}{result.stderr}")
    (staging / COMPLETE).write_text(version)
    staging.chmod(0o755)  # mkdtemp made it private; the cache may be shared
    if folder.exists() and not _filled(folder, complete):  # an interrupted fetch's leftover
        shutil.rmtree(folder, ignore_errors=True)
    try:
        staging.rename(folder)
    except OSError:
        shutil.rmtree(staging)
        if not _filled(folder, complete):  # not a concurrent fetch that filled it first
            raise
    return folder


def _filled(folder: Path, complete: Callable[[Path], bool]) -> bool:
    return (folder / COMPLETE).exists() and complete(folder)
