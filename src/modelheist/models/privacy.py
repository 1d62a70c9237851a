"""DP-SGD (Abadi et al., CCS '16) as a training protection, through Opacus (Yousefpour et al.,
'21): per-example gradient clipping to ``max_grad_norm``, Gaussian noise, Poisson sampling of
each batch, and a privacy accountant.

The owner names the privacy budget (``epsilon``, ``delta``); the noise multiplier that spends
that budget over the run's epochs at Opacus's sampling rate (one over the number of batches) is
found by Opacus's ``get_noise_multiplier`` before the first step, so that a budget that cannot be reached, or a
network with a layer Opacus cannot make private (BatchNorm mixes a batch's examples: use
``cnn-gn``), is refused before any training (:meth:`DpSgd.check`). The card records the noise
multiplier, the steps taken and the epsilon the accountant says was spent: more than the
target when other steps went through the private optimizer (a watermark's batches after each
epoch, which the accountant counts as it counts the data's, as the conflicts study's code did),
unless ``DpSgd.cover_other_steps`` calibrated the noise for them too (the other protections
say how many they take: ``TrainingProtection.private_steps``).
Random-shift augmentation is refused (Opacus samples the batches).

The conflicts study's setting (Szyller & Asokan, arXiv 2207.01991, §5; the talk's table):
epsilon 3, delta 1e-3, clipping norm 1.0, Poisson sampling (the defaults here). Deliberate
deviations: the Trainer's optimiser is made private as it is (SGD with momentum, as the study,
when ``TrainConfig.optimizer`` is ``sgd``; AdamW, the default, becomes DP-Adam, for which a
larger clipping norm changes little: Adam divides the common scale of the clipped gradients
and the noise out), under a warm-up + cosine schedule (the study: one-cycle); the noise is
drawn from a seeded generator so that a run is reproducible (Opacus's ``secure_mode`` is off:
fine for measurement, not for a deployment whose privacy must hold against an adversary who
knows the seed). Note that delta = 1e-3 exceeds
1 / n for n > 1,000 training examples, a weak guarantee; it is the study's setting.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from modelheist.errors import ModelheistError
from modelheist.models.training import BatchSource, TrainingProtection, TrainingRun

ACCOUNTANTS = ("prv", "rdp", "gdp")


@functools.lru_cache(maxsize=64)
def _noise_multiplier(
    epsilon: float, delta: float, sample_rate: float, accountant: str, epochs: int, steps: int
) -> float:
    """Opacus's ``get_noise_multiplier`` (a search over the accountant's epsilon, seconds with
    PRV) over ``steps`` steps, or ``epochs`` epochs when ``steps`` is 0; kept per setting: a run
    checks its budget before training and again when it starts, and a study trains many
    networks at one setting."""
    from opacus.accountants.utils import get_noise_multiplier

    with (
        np.errstate(divide="ignore", invalid="ignore"),  # the accountant's log(0) at q=1
        warnings.catch_warnings(),
    ):
        warnings.filterwarnings("ignore", "Optimal order is the largest alpha")
        return float(
            get_noise_multiplier(
                target_epsilon=epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                accountant=accountant,
                **({"steps": steps} if steps else {"epochs": epochs}),
            )
        )


class _LoaderBatches(BatchSource):
    """Opacus's Poisson-sampling data loader as the Trainer's batch source."""

    def __init__(self, loader: torch.utils.data.DataLoader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self):
        yield from self.loader


@dataclass
class DpSgd(TrainingProtection):
    """Train with DP-SGD at the privacy budget (``epsilon``, ``delta``) with per-example
    gradients clipped to ``max_grad_norm``, accounted by Opacus's ``accountant`` (module
    docstring). ``cover_other_steps`` calibrates the noise for the data's steps and those the
    run's other protections take through the private optimizer
    (:meth:`~modelheist.models.training.TrainingProtection.private_steps`, e.g. a watermark's
    trigger batches after each epoch), so that the run spends the budget, not more; off by
    default, as in the conflicts study, where they come on top."""

    name: ClassVar[str] = "dp-sgd"

    epsilon: float = 3.0
    delta: float = 1e-3
    max_grad_norm: float = 1.0
    accountant: str = "prv"
    cover_other_steps: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ModelheistError(f"DP-SGD needs an epsilon > 0, got {self.epsilon}")
        if not 0.0 < self.delta < 1.0:
            raise ModelheistError(f"DP-SGD needs a delta in (0, 1), got {self.delta}")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ModelheistError(f"DP-SGD needs a clipping norm > 0, got {self.max_grad_norm}")
        if self.accountant not in ACCOUNTANTS:
            raise ModelheistError(
                f"unknown privacy accountant {self.accountant!r}; choose one of: "
                + ", ".join(ACCOUNTANTS)
            )

    def check(
        self, module: nn.Module, examples: int, batch_size: int, epochs: int, other_steps: int = 0
    ) -> float:
        """Refuse a network Opacus cannot make private or a budget that ``epochs`` epochs over
        ``examples`` examples in expected batches of ``batch_size`` (and ``other_steps`` more
        steps at the same sampling rate) cannot meet; return the noise multiplier that spends
        the budget."""
        from opacus.validators import ModuleValidator

        problems = ModuleValidator.validate(module, strict=False)
        if problems:
            reasons = "; ".join(sorted({str(p).strip().splitlines()[0] for p in problems}))
            raise ModelheistError(
                f"DP-SGD cannot train this network ({reasons}); use an architecture without "
                "BatchNorm, e.g. cnn-gn"
            )
        if examples < 2 or batch_size < 1 or epochs < 1:
            raise ModelheistError("DP-SGD needs at least 2 examples, a batch and an epoch")
        batches = math.ceil(examples / batch_size)
        sample_rate = 1 / batches  # as Opacus samples: 1 / batches
        # the steps the private loader takes (its length: int(1 / rate)) and the others'; with
        # none (steps 0), Opacus's own conversion of epochs, as before the others could be covered
        steps = epochs * int(1 / sample_rate) + other_steps if other_steps else 0
        try:
            return _noise_multiplier(
                self.epsilon, self.delta, sample_rate, self.accountant, epochs, steps
            )
        except (ValueError, RuntimeError, OverflowError, FloatingPointError) as exc:
            raise ModelheistError(
                f"DP-SGD cannot reach epsilon {self.epsilon} at delta {self.delta} over "
                f"{epochs} epochs of {examples} examples in batches of {batch_size}"
                + (f" and {other_steps} other steps" if other_steps else "")
                + f" ({exc}); "
                "allow a larger epsilon, fewer epochs or more data"
            ) from None

    def prepare(self, run: TrainingRun) -> None:
        from opacus import PrivacyEngine

        if run.config.augment:
            raise ModelheistError(
                "DP-SGD samples its own batches: random-shift augmentation does not combine with "
                "it here"
            )
        if run.notes.get(self.name) is not None:
            raise ModelheistError("DP-SGD is named twice for one training run")
        others = (
            sum(p.private_steps(run) for p in run.protections if p is not self)
            if self.cover_other_steps
            else 0
        )
        sigma = self.check(run.module, len(run.x), run.config.batch_size, run.config.epochs, others)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(run.x, run.targets),
            batch_size=run.config.batch_size,
            generator=run.generator,  # Poisson sampling draws from the run's seeded generator
        )
        with warnings.catch_warnings():  # secure_mode off by choice (module docstring)
            warnings.filterwarnings("ignore", "Secure RNG turned off")
            engine = PrivacyEngine(accountant=self.accountant, secure_mode=False)
        device = next(run.module.parameters()).device  # Opacus draws noise where the weights are
        noise = torch.Generator(device=device).manual_seed(run.config.seed + 1)
        run.module, run.optimizer, private = engine.make_private(
            module=run.module,
            optimizer=run.optimizer,
            data_loader=loader,
            noise_multiplier=sigma,
            max_grad_norm=self.max_grad_norm,
            poisson_sampling=True,
            noise_generator=noise,
        )
        run.batches = _LoaderBatches(private)
        run.notes[self.name] = {"engine": engine, "noise_multiplier": sigma, "covered": others}

    def finish(self, run: TrainingRun) -> None:
        from opacus import GradSampleModule

        if isinstance(run.module, GradSampleModule):
            run.module = run.module.to_standard_module()

    def card_entry(self, run: TrainingRun) -> dict[str, Any]:
        notes = run.notes[self.name]
        accountant = notes["engine"].accountant
        try:
            spent = float(accountant.get_epsilon(delta=self.delta))
        except (ValueError, RuntimeError, OverflowError, FloatingPointError) as exc:
            raise ModelheistError(
                f"the privacy accountant could not compute epsilon: {exc}"
            ) from None
        return {
            **super().card_entry(run),
            "noise_multiplier": notes["noise_multiplier"],
            "steps": sum(steps for _, _, steps in accountant.history),
            **({"other_steps_covered": notes["covered"]} if self.cover_other_steps else {}),
            "epsilon_spent": spent,
        }

    def params(self) -> dict[str, Any]:
        params = super().params()
        if not self.cover_other_steps:  # the default: cards as before it existed
            params.pop("cover_other_steps")
        return params
