"""The ``modelheist`` command: one module per actor (docs/architecture.md, "The CLI").

* :mod:`~modelheist.cli.owner` — ``train``, ``watermark``, ``fingerprint``, ``serve``,
  ``keys``, ``detect-eval``;
* :mod:`~modelheist.cli.adversary` — ``attack NAME`` (generated from the attack registry),
  ``query``;
* :mod:`~modelheist.cli.ownership_attacks` — ``attack remove``, ``attack false-claim`` (the
  adversaries of ownership);
* :mod:`~modelheist.cli.verifier` — ``verify SCHEME``;
* :mod:`~modelheist.cli.claims` — ``claims keygen|add|show|bundle|check`` (the owner commits,
  a judge checks);
* :mod:`~modelheist.cli.experimenter` — ``datasets``, ``quickstart``, ``experiment run``,
  ``experiment ownership``, ``experiment conflicts``.

Commands import the library when they run, so that ``modelheist keys ...`` does not load
PyTorch.
"""

from modelheist.cli import adversary, claims, experimenter, owner, verifier
from modelheist.cli.common import app

__all__ = ["adversary", "app", "claims", "experimenter", "owner", "verifier"]
