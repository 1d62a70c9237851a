"""``python -m modelheist.cli``: the same command as ``modelheist``."""

from modelheist.cli import app

app()
