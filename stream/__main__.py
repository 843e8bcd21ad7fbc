"""``python -m stream`` is the ``stream`` command."""

from stream.cli import app

app(prog_name="stream")
