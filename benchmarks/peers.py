"""Peers as modelheist attacks: IBM ART's KnockoffNets behind the ExtractionAttack seam.

ART (an optional benchmark dependency, `make bench` installs it) queries the victim through an
ART ``BlackBoxClassifier`` whose predict function is our Oracle, so every query it makes is
counted by the API, as ours are, and it sees exactly the answers ours sees (probabilities,
top-k spread over the other classes, or one-hot labels). Its thieved classifier is the same
surrogate network as ours, trained by ART's own ``fit`` (Adam at a constant rate, no
augmentation: ART's KnockoffNets passes nothing else through), on the device ours trains on
(``MODELHEIST_DEVICE``).

Two things it is fed as it expects, which a careless configuration gets wrong:

* with ``use_probability=True`` ART trains on the answers as soft labels; with ``False`` (its
  default) on their arg-max;
* its adaptive strategy computes the loss reward as a cross-entropy of ``softmax(answer)``,
  i.e. it expects logits; ``logits=True`` hands it log-probabilities (logits up to a constant)
  instead of probabilities.

``match_steps``: raise ART's epochs so that its optimiser takes at least this many steps,
the rule our Knockoff follows (``min_steps``), for a like-for-like optimisation budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from modelheist.attacks.base import AttackerKnowledge, ExtractionAttack, natural_inputs
from modelheist.models.architectures import build_network, normalisation_stats
from modelheist.models.classifier import ModelCard, TorchClassifier
from modelheist.models.device import training_device
from modelheist.oracle import Oracle


@dataclass
class ArtKnockoffNets(ExtractionAttack):
    """IBM ART's KnockoffNets (random or adaptive sampling) through our Oracle."""

    name: ClassVar[str] = "art-knockoff"
    title: ClassVar[str] = "ART KnockoffNets"
    param_help: ClassVar[dict[str, str]] = {
        "sampling_strategy": "random or adaptive.",
        "use_probability": "Train on the probability answers (else on their arg-max).",
        "nb_epochs": "ART's training epochs.",
        "batch_size": "ART's fit batch size.",
        "lr": "Adam's learning rate (constant, as ART's fit runs it).",
        "reward": "Adaptive: cert, div, loss or all.",
        "logits": "Adaptive: hand ART log-probabilities, which its loss reward expects.",
        "match_steps": "Raise the epochs to take at least this many optimiser steps.",
    }

    sampling_strategy: str = "random"
    use_probability: bool = False
    nb_epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    reward: str = "all"
    logits: bool = False
    match_steps: int = 0

    def display_name(self) -> str:
        return f"{self.title} ({self.sampling_strategy})"

    def check_transfer_labels(self) -> None:
        if self.sampling_strategy != "adaptive":
            super().check_transfer_labels()

    def epochs_for(self, budget: int) -> int:
        steps_per_epoch = math.ceil(budget / self.batch_size)
        return max(self.nb_epochs, math.ceil(self.match_steps / steps_per_epoch))

    def _extract(
        self, oracle: Oracle, knowledge: AttackerKnowledge, progress: Any
    ) -> tuple[TorchClassifier, np.ndarray, dict[str, Any]]:
        from art.attacks.extraction import KnockoffNets as ArtAttack
        from art.estimators.classification import BlackBoxClassifier, PyTorchClassifier

        pool = natural_inputs(knowledge, oracle, self.name)
        shape, classes = tuple(oracle.input_shape), oracle.num_classes
        budget = (
            knowledge.budget
            if oracle.remaining is None
            else min(knowledge.budget, oracle.remaining)
        )

        def predict(x: np.ndarray) -> np.ndarray:
            p = oracle.query(np.asarray(x, np.float32)).soft_targets(classes)
            return np.log(np.clip(p, 1e-12, None)) if self.logits else p

        victim = BlackBoxClassifier(predict, shape, classes, clip_values=(0.0, 1.0))
        mean, std = normalisation_stats(pool)
        net = build_network(
            knowledge.surrogate_architecture, shape, classes, mean, std, knowledge.seed
        )
        thief = PyTorchClassifier(
            model=net,
            loss=torch.nn.CrossEntropyLoss(),
            optimizer=torch.optim.Adam(net.parameters(), lr=self.lr),
            input_shape=shape,
            nb_classes=classes,
            clip_values=(0.0, 1.0),
            device_type="gpu" if training_device().type == "cuda" else "cpu",
        )
        epochs = self.epochs_for(budget)
        np.random.seed(knowledge.seed)  # ART samples with NumPy's global generator
        torch.manual_seed(knowledge.seed)
        attack = ArtAttack(
            classifier=victim,
            batch_size_fit=self.batch_size,
            batch_size_query=min(256, oracle.max_batch),
            nb_epochs=epochs,
            nb_stolen=budget,
            sampling_strategy=self.sampling_strategy,
            reward=self.reward,
            use_probability=self.use_probability,
            verbose=False,
        )
        arms = None
        if knowledge.transfer_labels is not None:
            arms = np.eye(int(knowledge.transfer_labels.max()) + 1)[knowledge.transfer_labels]
        stolen = attack.extract(x=pool, y=arms, thieved_classifier=thief)
        card = ModelCard(
            knowledge.surrogate_architecture,
            "surrogate",
            list(oracle.classes),
            list(shape),
            {"mean": mean, "std": std},
            training={"attack": self.name, "epochs": epochs},
        )
        return (
            TorchClassifier(stolen.model.to("cpu").eval(), card),
            np.arange(0),
            {"epochs": epochs},
        )


PEERS = {ArtKnockoffNets.name: ArtKnockoffNets}
