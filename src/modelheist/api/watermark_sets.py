"""Reading the DAWN watermark sets a served API kept for its clients (issue 11).

Every client's ``dawn`` stage state (:mod:`modelheist.defenses.dawn`) holds the inputs the API
watermarked for that client, the wrong labels it answered and their HMAC digests. This module
reads them back from a state folder's ledger, for every pipeline the client was served under
(a restart with another pipeline keeps the older sets), with duplicates (one input asked
again) counted once, so that :class:`~modelheist.ownership.dawn.DawnScheme` can test a suspect.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelheist.api.ledger import Ledger
from modelheist.defenses.state import StageState
from modelheist.errors import ModelheistError


@dataclass(frozen=True)
class WatermarkSet:
    """One client's DAWN watermark: inputs, the wrong labels they got, their digests."""

    client: str
    inputs: np.ndarray
    labels: np.ndarray
    digests: np.ndarray
    num_classes: int

    def __len__(self) -> int:
        return len(self.labels)


def _dawn_positions(pipeline: str) -> list[int]:
    return [i for i, spec in enumerate(pipeline.split(" | ")) if spec.split(":")[0] == "dawn"]


def dawn_watermark_sets(state: str | Path, client: str | None = None) -> list[WatermarkSet]:
    """Each client's DAWN watermark set kept in the state folder ``state`` (only ``client``'s
    if given), clients without any watermarked query left out."""
    state = Path(state)
    if not (state / "modelheist.sqlite").is_file():
        raise ModelheistError(f"no modelheist state in {state} (the folder `serve --state` used)")
    ledger = Ledger.open(state)
    try:
        names = [record.name for record in ledger.clients()]
        if client is not None:
            if client not in names:
                raise ModelheistError(f"unknown client {client!r} in {state}")
            names = [client]
        pipelines = [p for p in ledger.pipelines() if _dawn_positions(p)]
        sets = []
        for name in names:
            inputs, labels, digests, classes = [], [], [], set()
            for pipeline in pipelines:
                saved = ledger.stage_state(name, pipeline)
                for position in _dawn_positions(pipeline):
                    if position not in saved:
                        continue
                    kept = StageState.from_records(
                        saved[position].values,
                        saved[position].records,
                        f"client {name!r}, stage {position + 1} (dawn)",
                        {},
                    )
                    if kept.rows("labels") == 0:
                        continue
                    inputs.append(kept.array("inputs"))
                    labels.append(kept.array("labels"))
                    digests.append(kept.array("digests"))
                    classes.add(kept.values.get("classes"))
            if not labels:
                continue
            shapes = {x.shape[1:] for x in inputs}
            if len(classes) != 1 or not isinstance(next(iter(classes)), int) or len(shapes) != 1:
                raise ModelheistError(
                    f"client {name!r}'s watermark sets were kept for different models (input "
                    "shapes or numbers of classes differ); verify against one at a time"
                )
            all_digests = np.concatenate(digests)
            _, first = np.unique(all_digests, axis=0, return_index=True)
            first = np.sort(first)  # the order they were asked in
            sets.append(
                WatermarkSet(
                    name,
                    np.concatenate(inputs)[first],
                    np.concatenate(labels)[first],
                    all_digests[first],
                    next(iter(classes)),
                )
            )
        return sets
    finally:
        ledger.close()
