"""The attacker's transfer sets, by name, for scenarios.

* a registered dataset's name: :func:`~modelheist.data.registry.attacker_transfer_set` (the
  attacker's pool of the victim's own dataset, or another dataset whole), with that dataset's
  labels as the transfer set's own annotation;
* ``mixed:in=N,noise=M``: a set that is mostly out-of-distribution, as in Orekondy et al.'s
  adaptive experiments: N images of the attacker's in-distribution pool, every mnist5k and
  scikit-learn digits image (but the victim's own dataset) fitted to the victim's shape, and M
  uniform-noise images; each
  keeps its source's own label (its class, offset per source; one label for the noise).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modelheist.data.registry import Dataset, attacker_transfer
from modelheist.errors import ModelheistError

MIXED_SOURCES = ("mnist5k", "digits")


@dataclass(frozen=True)
class TransferSet:
    """Inputs the attacker may query, their own labels (its annotation, not the victim's), and
    which of them come from the victim's distribution."""

    x: np.ndarray
    labels: np.ndarray
    in_distribution: np.ndarray


def transfer_set(spec: str, data: Dataset, seed: int) -> TransferSet:
    """The transfer set ``spec`` names against a victim trained on ``data``."""
    if spec.startswith("mixed:"):
        return _mixed(spec, data, seed)
    x, labels = attacker_transfer(spec, data)
    return TransferSet(x, labels.astype(np.int64), np.full(len(x), spec == data.name))


def _mixed(spec: str, data: Dataset, seed: int) -> TransferSet:
    options: dict[str, int] = {}
    for token in filter(None, (t.strip() for t in spec.partition(":")[2].split(","))):
        key, eq, value = token.partition("=")
        if not eq or key not in ("in", "noise"):
            raise ModelheistError(f"transfer set {spec!r}: use mixed:in=N,noise=M")
        try:
            options[key] = int(value)
        except ValueError:
            raise ModelheistError(f"transfer set {spec!r}: {key} must be an integer") from None
    in_dist, noise = options.get("in", 2500), options.get("noise", 1000)
    if not 0 < in_dist <= len(data.pool) or noise < 0:
        raise ModelheistError(
            f"transfer set {spec!r}: in must lie in [1, {len(data.pool)}], noise >= 0"
        )
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(data.pool), in_dist, replace=False)
    parts, labels = [data.pool.x[pick]], [data.pool.y[pick]]
    offset = data.num_classes
    for name in MIXED_SOURCES:
        if name == data.name:  # the victim's own data is the in-distribution part already
            continue
        x, y = attacker_transfer(name, data)  # the whole dataset, fitted to the victim
        parts.append(x)
        labels.append(y + offset)
        offset += int(y.max()) + 1
    parts.append(rng.random((noise, *data.input_shape), dtype=np.float32))
    labels.append(np.full(noise, offset, np.int64))
    x = np.concatenate(parts).astype(np.float32)
    in_mask = np.zeros(len(x), bool)
    in_mask[:in_dist] = True
    return TransferSet(x, np.concatenate(labels).astype(np.int64), in_mask)
