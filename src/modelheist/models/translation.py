"""Image-to-image networks: the translation victims and surrogates of Szyller et al. ("Good
Artists Copy, Great Artists Steal", 2021), who extract style-transfer and super-resolution
models.

Two classic super-resolution designs, which also serve a same-size style mapping (scale 1):

* ``srcnn`` (Dong et al., ECCV '14, §3): the input upsampled to the output size (bilinear; the
  paper's bicubic), then 9x9 convolutions to 64 maps, 1x1 to 32, 5x5 to the output channels;
  the owner's victim.
* ``espcn`` (Shi et al., CVPR '16, §2): 5x5 to 64 maps and 3x3 to 32 at the input's size, tanh,
  then 3x3 to C r^2 maps rearranged by a sub-pixel shuffle into the output (r the scale); the
  attacker's default, a different architecture from the victim's, as in Szyller et al.

Deliberate deviations: outputs pass a sigmoid (images in [0, 1], the API's range) and both
train with the project's one :class:`~modelheist.models.training.Trainer` (AdamW, warm-up and
cosine schedule) on a pixel loss (mean squared error, what PSNR measures) instead of the
papers' SGD with fixed rates.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modelheist.errors import ModelheistError
from modelheist.models.classifier import ModelCard
from modelheist.models.training import TrainConfig, Trainer

ARCHITECTURES = ("srcnn", "espcn")
VICTIM_ARCHITECTURE = "srcnn"
SURROGATE_ARCHITECTURE = "espcn"
#: The training recipe of the owner's translation models (`modelheist train` on a task).
TRANSLATION_EPOCHS = 20
TRANSLATION_LR = 2e-3
TRANSLATION_BATCH = 64
#: The attacker's surrogate recipe (``attack translate``), chosen on the validation split:
#: the best SSIM to the victim and PSNR gap on both tasks of ``benchmarks/translation.py
#: --validate`` (seed 0, 5,000 queries; docs/benchmarks.md).
SURROGATE_EPOCHS = 40
SURROGATE_LR = 5e-3
PREDICT_BATCH = 512


def _scale(input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> int:
    if len(input_shape) != 3 or len(output_shape) != 3:
        raise ModelheistError(f"translation maps images (C, H, W), not {input_shape}")
    scale = output_shape[1] // input_shape[1]
    if scale < 1 or tuple(s * scale for s in input_shape[1:]) != tuple(output_shape[1:]):
        raise ModelheistError(
            f"an output of {output_shape} is not a whole multiple of the input {input_shape}"
        )
    return scale


class Srcnn(nn.Module):
    """SRCNN (see the module docstring)."""

    def __init__(self, in_channels: int, out_channels: int, size: tuple[int, int]):
        super().__init__()
        self.size = size
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 64, 9, padding=4),
            nn.ReLU(),
            nn.Conv2d(64, 32, 1),
            nn.ReLU(),
            nn.Conv2d(32, out_channels, 5, padding=2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return torch.sigmoid(self.body(x))


class Espcn(nn.Module):
    """ESPCN (see the module docstring)."""

    def __init__(self, in_channels: int, out_channels: int, scale: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 64, 5, padding=2),
            nn.Tanh(),
            nn.Conv2d(64, 32, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(32, out_channels * scale * scale, 3, padding=1),
            nn.PixelShuffle(scale),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.body(x))


def build_translation_network(
    arch: str, input_shape: tuple[int, ...], output_shape: tuple[int, ...], seed: int = 0
) -> nn.Module:
    """A freshly initialised (seeded) network of ``arch`` from ``input_shape`` images to
    ``output_shape`` ones."""
    if arch not in ARCHITECTURES:
        raise ModelheistError(
            f"unknown translation architecture {arch!r}; choose one of: {', '.join(ARCHITECTURES)}"
        )
    scale = _scale(tuple(input_shape), tuple(output_shape))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if arch == "srcnn":
            return Srcnn(input_shape[0], output_shape[0], tuple(output_shape[1:]))  # type: ignore[arg-type]
        return Espcn(input_shape[0], output_shape[0], scale)


class TranslationModel:
    """A translation network behind a model card: images in, images out (values in [0, 1])."""

    def __init__(self, module: nn.Module, card: ModelCard):
        self.module = module
        self.card = card

    def translate(self, x: np.ndarray) -> np.ndarray:
        """The output images (n, *output_shape) for inputs ``x`` (n, *input_shape)."""
        self.module.eval()
        outputs = []
        with torch.no_grad():
            for start in range(0, len(x), PREDICT_BATCH):
                batch = torch.from_numpy(np.ascontiguousarray(x[start : start + PREDICT_BATCH]))
                outputs.append(self.module(batch.float()).numpy())
        if not outputs:
            return np.zeros((0, *(self.card.output_shape or ())), np.float32)
        return np.concatenate(outputs).astype(np.float32)


def translation_train_config(
    epochs: int = TRANSLATION_EPOCHS,
    seed: int = 0,
    lr: float = TRANSLATION_LR,
    batch_size: int = TRANSLATION_BATCH,
) -> TrainConfig:
    """The :class:`TrainConfig` of the translation recipe above (no weight decay)."""
    return TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=0.0, seed=seed)


def fit_translation_network(
    module: nn.Module,
    x: np.ndarray,
    targets: np.ndarray,
    config: TrainConfig,
    progress: Any = None,
    description: str = "train the translation network",
) -> list[float]:
    """Train ``module`` to map ``x`` to ``targets`` (images) on the pixel loss; return each
    epoch's mean loss."""
    if len(x) == 0:
        raise ModelheistError("cannot train on an empty set")
    trainer = Trainer(config, progress=progress, loss=F.mse_loss)
    run = trainer.fit(module, x, np.asarray(targets, np.float32), description)
    return run.notes["loss"]


def translation_card(
    arch: str,
    dataset: str,
    input_shape: tuple[int, ...],
    output_shape: tuple[int, ...],
    training: dict[str, Any],
) -> ModelCard:
    """The card of a translation model (no classes; its output shape)."""
    return ModelCard(
        architecture=arch,
        dataset=dataset,
        classes=[],
        input_shape=list(input_shape),
        training=training,
        input_range=[0.0, 1.0],
        output_shape=list(output_shape),
    )


def train_translation_model(
    data: Any,
    arch: str = VICTIM_ARCHITECTURE,
    config: TrainConfig | None = None,
    progress: Any = None,
) -> TranslationModel:
    """The owner's translation victim on ``data.train`` (a
    :class:`~modelheist.data.translation.TranslationSet`); its card records PSNR and SSIM to
    the ground truth on the validation and evaluation splits."""
    from modelheist.models.image_quality import psnr, ssim

    config = config or translation_train_config()
    module = build_translation_network(arch, data.input_shape, data.output_shape, config.seed)
    fit_translation_network(
        module, data.train.x, data.train.y, config, progress, f"train {arch} on {data.name}"
    )
    card = translation_card(
        arch,
        data.name,
        data.input_shape,
        data.output_shape,
        {**asdict(config), "split": data.split},
    )
    model = TranslationModel(module, card)
    for split_name, pairs in (("validation", data.validation), ("test", data.test)):
        if pairs is not None:
            out = model.translate(pairs.x)
            card.metrics[f"{split_name}_psnr"] = psnr(out, pairs.y)
            card.metrics[f"{split_name}_ssim"] = ssim(out, pairs.y)
    return model


def load_translation_model(state: dict[str, torch.Tensor], card: ModelCard) -> TranslationModel:
    """A translation model from its weights and card (see :mod:`modelheist.models.store`)."""
    module = build_translation_network(
        card.architecture, tuple(card.input_shape), tuple(card.output_shape or ())
    )
    module.load_state_dict(state, strict=True)
    return TranslationModel(module, card)
