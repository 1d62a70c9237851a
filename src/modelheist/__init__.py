"""modelheist: model stealing attacks, API-side defenses and model ownership resolution.

The package is laid out by actor (see DESIGN.md): ``data`` (datasets), ``models`` (the model
owner's victims), ``api`` (the inference API and the Oracle boundary), ``defenses`` (stages of the
API's pipeline), ``attacks`` (the malicious client), ``experiments`` (the experimenter).
"""

from modelheist.errors import ModelheistError

__version__ = "0.1.0"
__all__ = ["ModelheistError", "__version__"]
