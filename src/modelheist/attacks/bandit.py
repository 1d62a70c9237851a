"""The adaptive sampling policy of Knockoff Nets (Orekondy et al., CVPR '19, §4.1.2, Alg. 1).

The adversary treats the transfer set's labels (or, for an unlabelled transfer set, k-means
clusters of it) as the arms of a bandit. Each step it draws an arm z_t from the policy
pi_t = softmax(H_t), queries an image of that arm, observes a reward r_t, and moves the
preferences by the gradient-bandit rule (Sutton & Barto, §2.8):

    H_{t+1}(z_t) = H_t(z_t) + alpha (r_t - r_bar_t) (1 - pi_t(z_t))
    H_{t+1}(z)   = H_t(z)   - alpha (r_t - r_bar_t) pi_t(z)          for z != z_t

with r_bar_t the running mean reward. The rewards (§4.1.2, "Rewards") are

* certainty, R_cert = y_{t,k1} - y_{t,k2}: the margin between the victim's two largest
  probabilities;
* diversity, R_div = sum_k max(0, y_{t,k} - ybar_k): how much the answer adds to the mean ybar
  of the last ``window`` answers;
* loss, R_L = CE(y_t, F_A(x_t)): the surrogate's cross-entropy against the victim's answer,
  measured *before* the surrogate trains on it.

Their scales differ (R_L is unbounded), so each is standardised by its running mean and standard
deviation before they are averaged. The standard deviation is floored and the standardised
value clipped, so a reward is always finite: ART's ``reward="all"`` divides by a running
variance that is zero whenever the first rewards coincide and returns inf/NaN, which then
poisons the policy (ART issue #1746).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from modelheist.errors import ModelheistError

RewardName = Literal["cert", "div", "loss"]
REWARDS: tuple[RewardName, ...] = ("cert", "div", "loss")
_LOG_TINY = float(np.log(1e-12))


@dataclass
class GradientBandit:
    """Softmax policy over ``arms`` preferences, updated one reward at a time."""

    arms: int
    step: float = 0.1  # alpha; constant, as the rewards drift while the surrogate learns
    preferences: np.ndarray = field(init=False)
    available: np.ndarray = field(init=False)
    baseline: float = field(init=False, default=0.0)
    pulls: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.arms < 1 or not self.step > 0 or not math.isfinite(self.step):
            raise ModelheistError(
                f"a bandit needs >= 1 arm and a finite step > 0, got {self.arms} arms, "
                f"step {self.step}"
            )
        self.preferences = np.zeros(self.arms)
        self.available = np.ones(self.arms, bool)

    def policy(self) -> np.ndarray:
        """pi_t: softmax of the preferences over the arms that still have inputs."""
        if not self.available.any():
            raise ModelheistError("every arm of the bandit is exhausted")
        h = np.where(self.available, self.preferences, -np.inf)
        e = np.exp(h - h[self.available].max())
        return e / e.sum()

    def draw(self, rng: np.random.Generator) -> int:
        return int(rng.choice(self.arms, p=self.policy()))

    def retire(self, arm: int) -> None:
        """Take an arm out of the policy (its inputs are all queried)."""
        self.available[arm] = False

    def update(self, arm: int, reward: float) -> None:
        """The gradient-bandit step for one observed reward of ``arm``."""
        if not math.isfinite(reward):
            raise ModelheistError(f"bandit reward must be finite, got {reward}")
        # r_bar_t averages the rewards before this one (Sutton & Barto, with r_bar_1 = r_1)
        advantage = reward - self.baseline if self.pulls else 0.0
        self.pulls += 1
        self.baseline += (reward - self.baseline) / self.pulls
        if not self.available[arm]:
            return  # the arm ran out of inputs since it was drawn: no preference to move
        pi = self.policy()
        self.preferences[self.available] -= self.step * advantage * pi[self.available]
        self.preferences[arm] += self.step * advantage  # (1 - pi) for the pulled arm in total


@dataclass
class RunningStandardiser:
    """Welford running mean/variance of each reward; standardised values are finite."""

    names: Sequence[str]
    floor: float = 1e-3
    clip: float = 5.0
    count: int = field(init=False, default=0)
    mean: np.ndarray = field(init=False)
    m2: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.mean = np.zeros(len(self.names))
        self.m2 = np.zeros(len(self.names))

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        """Fold ``raw`` (one value per reward) into the statistics and standardise it."""
        self.count += 1
        delta = raw - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (raw - self.mean)
        if self.count < 2:
            return np.zeros_like(raw)  # nothing to compare the first reward with
        std = np.sqrt(self.m2 / (self.count - 1))
        return np.clip((raw - self.mean) / np.maximum(std, self.floor), -self.clip, self.clip)


@dataclass
class KnockoffRewards:
    """Orekondy et al.'s certainty, diversity and loss rewards for one answer at a time."""

    rewards: Sequence[RewardName]
    num_classes: int
    window: int = 25  # Delta, the look-back of the diversity reward
    recent: deque = field(init=False)
    standardiser: RunningStandardiser = field(init=False)

    def __post_init__(self) -> None:
        unknown = set(self.rewards) - set(REWARDS)
        if not self.rewards or unknown:
            raise ModelheistError(
                f"unknown Knockoff reward(s) {sorted(unknown)}; choose from {', '.join(REWARDS)}"
            )
        if self.window < 1:
            raise ModelheistError(f"the diversity window must be >= 1, got {self.window}")
        self.recent = deque(maxlen=self.window)
        self.standardiser = RunningStandardiser(list(self.rewards))

    def raw(self, answer: np.ndarray, surrogate_log_probs: np.ndarray) -> np.ndarray:
        """The unstandardised rewards for one victim answer (a probability vector)."""
        values = []
        for name in self.rewards:
            if name == "cert":
                top2 = np.sort(answer)[-2:] if self.num_classes > 1 else np.array([0.0, 1.0])
                values.append(float(top2[1] - top2[0]))
            elif name == "div":
                mean = np.mean(self.recent, axis=0) if self.recent else np.zeros_like(answer)
                values.append(float(np.maximum(0.0, answer - mean).sum()))
            else:
                log_probs = np.maximum(surrogate_log_probs, _LOG_TINY)  # finite even at p = 0
                values.append(float(-(answer * log_probs).sum()))
        self.recent.append(answer)
        return np.asarray(values)

    def __call__(self, answer: np.ndarray, surrogate_log_probs: np.ndarray) -> float:
        """The combined reward: the mean of the standardised rewards."""
        return float(self.standardiser(self.raw(answer, surrogate_log_probs)).mean())
