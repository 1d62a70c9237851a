"""Extracting an image-to-image model (Szyller et al., "Good Artists Copy, Great Artists Steal",
2021): query the API with images of its input domain and train a translation network of
the attacker's own choosing on the images it returns.

The attacker holds images of the victim's input domain (its pool: for 2x super-resolution, the
low-resolution images it wants enlarged), as in the paper, whose adversary queries with data
of the victim's own domain and knows nothing of its architecture. It sends ``budget`` of them,
drawn without replacement (seeded), and trains its network (``arch``; ESPCN by default, not
the victim's SRCNN) on the answers with a pixel loss (mean squared error). A perceptual loss
would need a pre-trained image network, which this machine does not hold; on 28x28 grey
images the pixel loss is what PSNR and SSIM reward, so there is none (a deliberate choice).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
from rich.progress import Progress

from modelheist.attacks.base import AttackerKnowledge, ExtractionAttack, ask_in_batches
from modelheist.errors import ModelheistError
from modelheist.models.classifier import Classifier
from modelheist.models.translation import (
    ARCHITECTURES,
    SURROGATE_ARCHITECTURE,
    SURROGATE_EPOCHS,
    SURROGATE_LR,
    TRANSLATION_BATCH,
    TranslationModel,
    build_translation_network,
    fit_translation_network,
    translation_card,
    translation_train_config,
)
from modelheist.oracle import Oracle, OutputKind


@dataclass
class TranslationExtraction(ExtractionAttack):
    """Szyller et al.'s extraction of an image-to-image API (see the module docstring)."""

    arch: str = SURROGATE_ARCHITECTURE
    epochs: int = SURROGATE_EPOCHS
    lr: float = SURROGATE_LR
    batch_size: int = TRANSLATION_BATCH

    name: ClassVar[str] = "translate"
    title: ClassVar[str] = "Image translation (Szyller et al.)"
    supported_outputs: ClassVar[frozenset[OutputKind]] = frozenset({"images"})
    extracts: ClassVar[Literal["arrays", "text", "translation"]] = "translation"
    param_help: ClassVar[dict[str, str]] = {
        "arch": f"the attacker's translation network: {' or '.join(ARCHITECTURES)}",
        "epochs": "training epochs on the answers",
        "lr": "learning rate (AdamW, warm-up and cosine decay)",
        "batch_size": "training batch size",
    }

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ModelheistError(
                f"arch must be one of {', '.join(ARCHITECTURES)}, got {self.arch!r}"
            )
        if min(self.epochs, self.batch_size) < 1 or self.lr <= 0:
            raise ModelheistError("epochs and batch size must be >= 1 and lr > 0")

    def _extract(
        self, oracle: Oracle, knowledge: AttackerKnowledge, progress: Progress | None
    ) -> tuple[Classifier, np.ndarray, dict[str, Any]]:
        output_shape = oracle.output_shape
        if output_shape is None:
            raise ModelheistError(
                f"{self.name} extracts image-to-image models; this API classifies"
            )
        pool = knowledge.transfer_set
        if pool.dtype == object or tuple(pool.shape[1:]) != tuple(oracle.input_shape):
            raise ModelheistError(
                f"the attacker's images have shape {tuple(pool.shape[1:])}; the API takes "
                f"{tuple(oracle.input_shape)}"
            )
        remaining = knowledge.budget if oracle.remaining is None else oracle.remaining
        n = min(knowledge.budget, remaining, len(pool))
        if n < 1:
            raise ModelheistError("the attacker holds no image to query with")
        rng = np.random.default_rng(knowledge.seed)
        queried = np.sort(rng.choice(len(pool), n, replace=False))
        x = np.asarray(pool[queried], np.float32)
        answer = ask_in_batches(oracle, x, progress)
        assert answer.images is not None  # supported_outputs: images only
        config = translation_train_config(self.epochs, knowledge.seed, self.lr, self.batch_size)
        module = build_translation_network(
            self.arch, tuple(oracle.input_shape), tuple(output_shape), knowledge.seed
        )
        losses = fit_translation_network(
            module, x, answer.images, config, progress, "train the surrogate"
        )
        card = translation_card(
            self.arch,
            "surrogate",
            tuple(oracle.input_shape),
            tuple(output_shape),
            {"attack": self.name, "queries": n, "epochs": self.epochs},
        )
        details = {"queries_sent": n, "loss": losses}
        return TranslationModel(module, card), queried, details  # type: ignore[return-value]
