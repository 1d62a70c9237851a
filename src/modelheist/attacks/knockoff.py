"""Knockoff Nets, random strategy (Orekondy et al., "Knockoff Nets: Stealing Functionality of
Black-Box Models", CVPR '19, §4.1 "random" sampling and §4.2 training).

The adversary draws ``budget`` inputs uniformly without replacement from a natural transfer set,
queries the victim, and trains a surrogate on the answers: on the probability vectors with a
soft cross-entropy (KL divergence) when the API returns them, on top-k answers with the
remaining mass spread over the other classes, and on one-hot labels when it returns labels only.

Deliberate deviations from the paper, each of which makes better use of every answer without
spending a query more (each can be switched off to recover the paper's procedure):

* distillation (Hinton et al. '15): when the API returns exact probability vectors p, the
  loss is a * T^2 * CE(softmax(z/T), softmax(log p / T)) + (1 - a) * CE(softmax(z), p) with
  T = ``temperature`` (4) and a = ``temperature_weight`` (0.5). The tempered term weighs the
  small probabilities (the victim's "dark knowledge") that plain KL nearly ignores, which is
  what transfers from out-of-distribution queries; the T = 1 term keeps the arg-max sharp.
  Rounded, top-k and label answers are used at T = 1 only;
* at least ``min_steps`` optimiser steps, so that a 500-query transfer set is not
  under-trained; random-shift augmentation of the queried images (``augment``) is available
  but off: it lowered the surrogate's agreement with the victim on validation;
* optionally, an ensemble surrogate (``members`` > 1): that many networks of the surrogate
  architecture trained independently on the same answers, whose averaged probabilities agree
  with the victim more often than any one of them (the adversary chooses its own model);
* optional self-training on the unqueried remainder of the transfer set (``rounds`` >= 1,
  ``unlabeled``): the surrogate labels the inputs it never paid for with its own soft
  predictions and is fine-tuned on those plus the victim's answers ("noisy student", Xie et
  al. CVPR '20). Off by default: on validation it was level at 1,000 in-distribution queries
  and lower at 5,000 on every seed (``examples/knockoff-self-training.toml``).

The defaults were chosen on validation fidelity (a split held out of the attacker's pool and of
the evaluation split) against a Fashion-MNIST CNN, 3 seeds: ``examples/knockoff-tuning.toml``
(temperature and augmentation at 5,000 queries, in and out of distribution),
``examples/knockoff-augmentation.toml`` (augmentation at 500 and 1,000) and
``examples/knockoff-self-training.toml`` (self-training at 1,000 and 5,000); docs/benchmarks.md,
"Choosing Knockoff's training recipe on validation", gives the tables from their results stores.
The learning rate (2e-3) and the schedule (60 epochs, at least 800 steps) were not searched
again on validation; the peer runs with the same optimisation budget.

Adaptive strategy (§4.1.2, ``strategy="adaptive"``): the queries are drawn by a gradient bandit
over the transfer set's own labels (``AttackerKnowledge.transfer_labels``) or, when it has none,
over k-means clusters of it (``clusters``), with the certainty, diversity and loss rewards of
:mod:`modelheist.attacks.bandit`. Deliberate deviations from Alg. 1: the bandit draws
``round_size`` arms at a time from the policy of the round's start (the updates follow, one
per answer) and the online surrogate that scores the loss reward takes ``online_steps``
optimiser steps on everything answered after each round, instead of one step per query (a
fraction of the training cost); arms are flat, not the
paper's label hierarchy (our transfer sets have none); images are drawn without replacement;
and the final surrogate is trained from scratch with the recipe above, exactly as for the
random strategy, so that the two strategies differ only in which inputs they query.
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from rich.progress import Progress

from modelheist.attacks.bandit import REWARDS, GradientBandit, KnockoffRewards, RewardName
from modelheist.attacks.base import (
    AttackerKnowledge,
    ExtractionAttack,
    exact_probabilities,
    natural_inputs,
)
from modelheist.errors import ModelheistError
from modelheist.models.architectures import build_network, normalisation_stats
from modelheist.models.classifier import ModelCard, TorchClassifier
from modelheist.models.training import (
    TrainConfig,
    soft_cross_entropy,
    train_members,
    train_network,
)
from modelheist.oracle import Oracle
from modelheist.oracle.answer import concatenate

log = logging.getLogger(__name__)


@dataclass
class KnockoffNets(ExtractionAttack):
    """Knockoff Nets with random or adaptive (gradient-bandit) sampling from the transfer set."""

    name: ClassVar[str] = "knockoff"
    title: ClassVar[str] = "Knockoff Nets"
    transfer_labels_help: ClassVar[str | None] = (
        "Adaptive: .npy of one integer label per transfer-set input (the transfer set's own "
        "annotation), the bandit's arms; default: k-means clusters."
    )
    param_help: ClassVar[dict[str, str]] = {
        "strategy": "Sampling: random, or adaptive (gradient bandit, §4.1.2).",
        "epochs": "Surrogate training epochs.",
        "min_steps": "Fewest optimiser steps of the surrogate's training, whatever the budget.",
        "batch_size": "Training batch size.",
        "lr": "Peak learning rate (AdamW, warm-up and cosine decay).",
        "augment": "Random-shift augmentation of the queried images.",
        "temperature": "Distillation temperature (1: the paper's plain KL).",
        "temperature_weight": "Weight of the tempered loss against plain KL (1: tempered only).",
        "members": "Final surrogate: an ensemble of this many networks.",
        "rounds": "Self-training rounds on the unqueried transfer inputs (0: off).",
        "unlabeled": "Unqueried transfer inputs for self-training (default: all).",
        "student_epochs": "Epochs of each self-training round.",
        "answered_share": "Self-training: share of each batch drawn from the answered inputs.",
        "query_batch": "Inputs sent per request.",
        "rewards": "Adaptive: comma-separated rewards among cert, div, loss.",
        "bandit_step": "Adaptive: the gradient bandit's step size.",
        "clusters": "Adaptive: k-means clusters as arms (without transfer labels).",
        "round_size": "Adaptive: queries drawn per bandit round.",
        "online_steps": "Adaptive: optimiser steps of the online surrogate per round.",
        "diversity_window": "Adaptive: answers the diversity reward compares with.",
    }

    strategy: Literal["random", "adaptive"] = "random"
    epochs: int = 60
    min_steps: int = 800
    batch_size: int = 64
    lr: float = 2e-3
    augment: bool = False
    temperature: float = 4.0
    temperature_weight: float = 0.5
    members: int = 1
    rounds: int = 0
    unlabeled: int | None = None
    student_epochs: int = 3
    answered_share: float = 1 / 3
    query_batch: int = 256
    # adaptive strategy
    rewards: tuple[RewardName, ...] = REWARDS
    bandit_step: float = 0.1
    clusters: int = 30
    round_size: int = 32
    online_steps: int = 8
    diversity_window: int = 25

    def __post_init__(self) -> None:
        if self.strategy not in ("random", "adaptive"):
            raise ModelheistError(
                f"unknown Knockoff strategy {self.strategy!r}; available: random, adaptive"
            )
        if self.clusters < 1 or self.round_size < 1 or self.online_steps < 0:
            raise ModelheistError("clusters and round_size must be >= 1, online_steps >= 0")
        KnockoffRewards(self.rewards, 2, self.diversity_window)  # validates the reward names
        GradientBandit(1, self.bandit_step)  # validates the step
        if self.epochs < 1 or self.batch_size < 1 or self.query_batch < 1 or self.rounds < 0:
            raise ModelheistError("epochs, batch_size and query_batch must be >= 1, rounds >= 0")
        if self.unlabeled is not None and self.unlabeled < 0:
            raise ModelheistError("unlabeled must be >= 0 (or None for the whole remainder)")
        if not 0.0 <= self.temperature_weight <= 1.0:
            raise ModelheistError("temperature_weight must lie in [0, 1]")
        if self.members < 1:
            raise ModelheistError(f"members must be >= 1, got {self.members}")
        if not 0.0 < self.answered_share < 1.0 or self.temperature <= 0:
            raise ModelheistError("answered_share must lie in (0, 1) and temperature be > 0")

    def display_name(self) -> str:
        return f"{self.title} ({self.strategy})"

    def check_transfer_labels(self) -> None:
        if self.strategy != "adaptive":
            raise ModelheistError(
                "transfer labels (--transfer-labels) serve --strategy adaptive only"
            )

    def _config(self, n: int, epochs: int, seed: int, temperature: float) -> TrainConfig:
        steps_per_epoch = -(-n // self.batch_size)
        epochs = max(epochs, -(-self.min_steps // steps_per_epoch))
        return TrainConfig(
            epochs=epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            augment=self.augment,
            temperature=temperature,
            temperature_weight=self.temperature_weight,
            seed=seed,
        )

    def _extract(
        self, oracle: Oracle, knowledge: AttackerKnowledge, progress: Progress | None
    ) -> tuple[TorchClassifier, np.ndarray, dict[str, Any]]:
        pool = natural_inputs(knowledge, oracle, self.name)
        rng = np.random.default_rng(knowledge.seed)
        n_query = min(oracle.remaining, len(pool))
        if n_query < knowledge.budget:
            log.warning(
                "transfer set or oracle allows %d queries of the %d budgeted",
                n_query,
                knowledge.budget,
            )
        mean, std = normalisation_stats(pool)
        if self.strategy == "adaptive":
            queried, answer, arm_counts = self._adaptive_queries(
                oracle, pool, (mean, std), knowledge, n_query, rng, progress
            )
            rest = np.setdiff1d(np.arange(len(pool)), queried)
            rest = rest[rng.permutation(len(rest))]
        else:
            order = rng.permutation(len(pool))
            queried, rest = order[:n_query], order[n_query:]
            answer = self._random_queries(oracle, pool, queried, progress)
        num_classes = oracle.num_classes
        targets = answer.soft_targets(num_classes)
        # Distil at temperature T only from exact probability vectors: rounded or top-k answers
        # hold zeros whose logarithm carries no information.
        exact = exact_probabilities(answer)
        temperature = self.temperature if exact else 1.0
        x_lab = pool[queried]

        card = ModelCard(
            architecture=knowledge.surrogate_architecture,
            dataset="surrogate",
            classes=list(oracle.classes),
            input_shape=list(oracle.input_shape),
            normalisation={"mean": mean, "std": std},
            training={"attack": self.name, "queries": n_query, "output": answer.kind},
            members=self.members,
        )
        seed = knowledge.seed
        net = build_network(
            card.architecture, card.input_shape, num_classes, mean, std, seed, self.members
        )
        train_members(
            net,
            x_lab,
            targets,
            lambda i: self._config(len(x_lab), self.epochs, seed + i, temperature),
            progress,
            "train surrogate",
        )
        surrogate = TorchClassifier(net, card)

        n_unlabeled = len(rest) if self.unlabeled is None else min(self.unlabeled, len(rest))
        x_unl = pool[rest[:n_unlabeled]]
        for r in range(self.rounds if n_unlabeled else 0):
            pseudo = surrogate.predict_proba(x_unl)
            # repeat the victim's answers so they make up ``answered_share`` of each epoch
            share = self.answered_share / (1.0 - self.answered_share)
            repeat = max(1, round(share * n_unlabeled / len(x_lab)))
            x_all = np.concatenate([np.repeat(x_lab, repeat, axis=0), x_unl])
            t_all = np.concatenate([np.repeat(targets, repeat, axis=0), pseudo])
            student = copy.deepcopy(surrogate)  # warm start: measured better than from scratch
            config = self._config(len(x_all), self.student_epochs, seed + r + 1, temperature)
            train_network(student.module, x_all, t_all, config, progress, f"self-training {r + 1}")
            surrogate = student
        details = {"output_kind": answer.kind, "unlabeled_used": n_unlabeled if self.rounds else 0}
        if self.strategy == "adaptive":
            details["queries_per_arm"] = arm_counts
        return surrogate, queried, details

    def _random_queries(self, oracle: Oracle, pool, queried, progress):
        """Query ``pool[queried]`` in batches of ``query_batch``."""
        task = progress.add_task("querying", total=len(queried)) if progress else None
        answers = []
        for start in range(0, len(queried), self.query_batch):
            batch = queried[start : start + self.query_batch]
            answers.append(oracle.query(pool[batch]))
            if task is not None:
                progress.advance(task, len(batch))
        if task is not None:
            progress.remove_task(task)
        return concatenate(answers)

    def _arms(self, pool: np.ndarray, knowledge: AttackerKnowledge) -> np.ndarray:
        """Each input's arm: the transfer set's own label, else its k-means cluster."""
        if knowledge.transfer_labels is not None:
            return np.unique(knowledge.transfer_labels, return_inverse=True)[1]
        from sklearn.cluster import KMeans
        from sklearn.exceptions import ConvergenceWarning

        k = min(self.clusters, len(pool))
        flat = pool.reshape(len(pool), -1).astype(np.float32)
        with warnings.catch_warnings():  # fewer distinct inputs than clusters: empty arms,
            warnings.simplefilter("ignore", ConvergenceWarning)  # which are retired
            return KMeans(k, n_init=1, random_state=knowledge.seed).fit_predict(flat)

    def _adaptive_queries(self, oracle, pool, stats, knowledge, n_query, rng, progress):
        """Orekondy et al.'s Alg. 1, ``round_size`` arms at a time (see the module docstring)."""
        arms = self._arms(pool, knowledge)
        members = [
            rng.permutation(np.flatnonzero(arms == a)).tolist() for a in range(arms.max() + 1)
        ]
        bandit = GradientBandit(len(members), self.bandit_step)
        for arm in np.flatnonzero([not m for m in members]):
            bandit.retire(int(arm))  # a label absent from the pool, or an empty k-means cluster
        rewards = KnockoffRewards(self.rewards, oracle.num_classes, self.diversity_window)
        mean, std = stats  # the pool's normalisation, as for the final surrogate
        online = build_network(
            knowledge.surrogate_architecture,
            oracle.input_shape,
            oracle.num_classes,
            mean,
            std,
            knowledge.seed,
        )
        optimiser = torch.optim.AdamW(online.parameters(), lr=self.lr, weight_decay=1e-4)
        generator = torch.Generator().manual_seed(knowledge.seed)
        queried: list[int] = []
        answers = []
        targets = np.empty((n_query, oracle.num_classes), np.float32)  # filled round by round
        task = progress.add_task("adaptive queries", total=n_query) if progress else None
        while len(queried) < n_query:
            picks = []
            for _ in range(min(self.round_size, n_query - len(queried))):
                arm = bandit.draw(rng)
                picks.append((arm, members[arm].pop()))
                if not members[arm]:
                    bandit.retire(arm)
            index = np.array([i for _, i in picks])
            answer = oracle.query(pool[index])
            soft = answer.soft_targets(oracle.num_classes)
            online.eval()
            with torch.inference_mode():
                log_probs = torch.log_softmax(
                    online(torch.from_numpy(np.ascontiguousarray(pool[index], np.float32))), 1
                ).numpy()
            for (arm, _), y, lp in zip(picks, soft, log_probs, strict=True):
                bandit.update(arm, rewards(y.astype(np.float64), lp.astype(np.float64)))
            targets[len(queried) : len(queried) + len(index)] = soft
            queried.extend(index.tolist())
            answers.append(answer)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(knowledge.seed + len(queried))  # dropout masks
                self._online_steps(
                    online, optimiser, pool, np.asarray(queried), targets[: len(queried)], generator
                )
            if task is not None:
                progress.advance(task, len(index))
        if task is not None:
            progress.remove_task(task)
        counts = np.bincount(arms[queried], minlength=len(members)).tolist()
        return np.array(queried), concatenate(answers), counts

    def _online_steps(self, net, optimiser, pool, queried, targets, generator) -> None:
        """``online_steps`` optimiser steps of the online surrogate on random answered batches
        (``queried``: indices into ``pool``; ``targets``: their answers)."""
        net.train()
        for _ in range(self.online_steps):
            rows = torch.randint(len(queried), (self.batch_size,), generator=generator).numpy()
            xs = torch.from_numpy(np.ascontiguousarray(pool[queried[rows]], np.float32))
            loss = soft_cross_entropy(net(xs), torch.from_numpy(targets[rows]))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        net.eval()
