"""modelheist: model stealing attacks, API-side defenses and model ownership resolution.

The package is laid out by actor and layer (docs/architecture.md): ``data`` (datasets),
``models`` (the model owner's victims and training), ``oracle`` (the black-box boundary),
``api`` (the inference API), ``defenses`` (stages of the API's pipeline), ``attacks`` (the
malicious client), ``ownership`` (the verifier), ``experiments`` (the experimenter), ``cli``.
"""

from modelheist.errors import ModelheistError

__version__ = "0.1.0"
__all__ = ["ModelheistError", "__version__"]
