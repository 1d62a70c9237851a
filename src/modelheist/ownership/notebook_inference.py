"""Dataset inference as the reference notebooks compute it (Maini et al., ICLR '21; the authors'
code, cleverhans-lab/dataset-inference, ``src/notebooks/*_rand.ipynb``, cells 8 to 20),
reproduced to explain the p-values the paper and Szyller & Asokan's conflict table publish
(p < 1e-30 where modelheist's calibrated test, :class:`DatasetInferenceScheme`, finds none).

The notebooks differ from the paper's description in three ways, each reproduced here:

1. **A row is 30 images, not one.** The Blind Walk distances of n images, a tensor of shape
   (n, 10 directions, 3 noise types), are standardised per noise type with the owner's private
   statistics and reshaped by ``tensor.T.reshape(n, 30)``: row r holds entries 30 r to
   30 r + 29 of the tensor read in (noise type, direction, image) order, i.e. the distances of
   images 30 r mod n onwards along one direction in one norm (a row that reaches the n-th image
   continues with the next direction). The regressor scores such rows, and the t-test counts
   them as samples, so m rows average about 30 m images' distances.
2. **The regressor is scored on the images it was trained on.** It is trained on rows 0 to
   n/2 - 1 (the L-inf directions and half the L2 ones) and scored on rows n/2 to n - 1 (the
   other L2 directions and the L1 ones) of the same n images.
3. **The reported number is the harmonic mean** of the one-sided Welch p-values of 100 draws of
   m rows (m = 10 in the paper's tables; the same positions on the private and the public side).
   It is not a valid p-value: the draws overlap, and a harmonic mean lies below the mean.

:class:`NotebookInference` is for comparison only: it computes the notebooks' number and the
single Welch test over every scored row that the notebooks also print. modelheist decides
ownership with :class:`~modelheist.ownership.dataset_inference.DatasetInferenceScheme` alone.
Deliberate deviations: the Blind Walk directions are drawn from ``embedding.seed`` (private
images) and ``embedding.seed + 1`` (public ones), the same for every model (the notebooks draw
fresh ones per model and call); the images are a seeded random choice of the private and public
sets (the notebooks: the first n of each). Its cost: every model walks from 2 n images (30
walks each, up to ``steps`` queries per walk).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from rich.progress import Progress
from scipy.stats import ttest_ind

from modelheist.errors import ModelheistError
from modelheist.oracle import Oracle
from modelheist.ownership.dataset_inference import (
    NOISE_TYPES,
    BlindWalk,
    finite_p_value,
    harmonic_mean_of_draws,
    noise_type_statistics,
    score_rows,
    standardised,
    train_regressor,
)


def notebook_rows(embedded: np.ndarray) -> np.ndarray:
    """The notebooks' rows of an (n, 3 k) embedding ordered noise type by noise type: what
    ``tensor.T.reshape(n, 3 k)`` gives for their (n, k, 3) tensor; row r holds 3 k
    consecutive images' distances along one direction in one norm."""
    n, width = embedded.shape
    return np.ascontiguousarray(embedded.T).reshape(n, width)


@dataclass(frozen=True)
class NotebookReference:
    """What :meth:`NotebookInference.fit` keeps: the images, the owner's statistics and the
    regressor's weights."""

    samples: int
    private: tuple[np.ndarray, np.ndarray]
    public: tuple[np.ndarray, np.ndarray]
    mean: np.ndarray
    std: np.ndarray
    weights: dict[str, np.ndarray] = field(repr=False)
    owner_embedded: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class NotebookInference:
    """The notebooks' dataset inference: ``samples`` private and as many public images (the
    notebooks' 1,000), ``m`` rows per draw (their tables' 10), ``draws`` draws (their 100);
    ``seed`` picks the images, the regressor's initialisation and the draws."""

    embedding: BlindWalk = field(default_factory=BlindWalk)
    samples: int = 1000
    m: int = 10
    draws: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.samples < 4 or self.samples % 2:
            raise ModelheistError(f"samples must be even and at least 4, got {self.samples}")
        if not 2 <= self.m <= self.samples // 2 or self.draws < 1:
            raise ModelheistError(f"m must lie in [2, {self.samples // 2}] and draws be at least 1")

    def fit(
        self,
        owner: Oracle,
        private: tuple[np.ndarray, np.ndarray],
        public: tuple[np.ndarray, np.ndarray],
        progress: Progress | None = None,
    ) -> NotebookReference:
        """Embed ``samples`` of the owner's ``private`` and ``public`` (inputs, labels) through
        ``owner`` and train the regressor on the first half of the rows (cells 8 to 12)."""
        if min(len(private[0]), len(public[0])) < self.samples:
            raise ModelheistError(
                f"the notebooks' construction needs {self.samples} private and public samples"
            )
        rng = np.random.default_rng(self.seed)
        p_pick = np.sort(rng.permutation(len(private[0]))[: self.samples])
        q_pick = np.sort(rng.permutation(len(public[0]))[: self.samples])
        chosen_private = (private[0][p_pick], private[1][p_pick])
        chosen_public = (public[0][q_pick], public[1][q_pick])
        own_private = self._embed(owner, chosen_private, 0, progress)
        own_public = self._embed(owner, chosen_public, 1, progress)
        mean, std = noise_type_statistics(own_private, ddof=1)  # torch's std: unbiased
        half = self.samples // 2
        rows = [notebook_rows(standardised(e, mean, std))[:half] for e in (own_private, own_public)]
        signs = np.concatenate([np.ones(half), -np.ones(half)])
        weights = train_regressor(np.concatenate(rows), signs, self.seed)
        return NotebookReference(
            self.samples, chosen_private, chosen_public, mean, std, weights,
            (own_private, own_public),
        )  # fmt: skip

    def evaluate(
        self,
        reference: NotebookReference,
        suspect: Oracle | None,
        progress: Progress | None = None,
    ) -> dict[str, float]:
        """The notebooks' numbers for ``suspect``: ``harmonic_mean_p`` (their tables), the
        one Welch test over every scored row (``all_rows_p``) and the mean score difference.
        ``suspect`` None: the owner's model itself, from the distances :meth:`fit` measured (the
        same walks through the same model: the same distances, at no query)."""
        if reference.samples != self.samples:
            raise ModelheistError(
                f"the reference was fitted with {reference.samples} samples, not {self.samples}"
            )
        private, public = (self._scores(reference, suspect, side, progress) for side in (0, 1))
        whole = ttest_ind(private, public, equal_var=False, alternative="greater")
        rng = np.random.default_rng([self.seed, 1])
        return {
            "harmonic_mean_p": harmonic_mean_of_draws(private, public, self.m, self.draws, rng),
            "all_rows_p": finite_p_value(whole.pvalue),
            "score_difference": float(private.mean() - public.mean()),
            "m": self.m,
            "draws": self.draws,
            "images_per_row": self.embedding.directions * len(NOISE_TYPES),
        }

    def _scores(
        self,
        reference: NotebookReference,
        suspect: Oracle | None,
        side: int,
        progress: Progress | None,
    ) -> np.ndarray:
        """The regressor's scores of the suspect's second half of rows, for the private
        (``side`` 0) or the public (1) images (cells 15 and 17)."""
        if suspect is None:
            if reference.owner_embedded is None:
                raise ModelheistError("this reference keeps no distances of the owner's model")
            embedded = reference.owner_embedded[side]
        else:
            images = (reference.private, reference.public)[side]
            embedded = self._embed(suspect, images, side, progress)
        rows = notebook_rows(standardised(embedded, reference.mean, reference.std))
        return score_rows(reference.weights, rows[self.samples // 2 :])

    def _embed(
        self,
        oracle: Oracle,
        images: tuple[np.ndarray, np.ndarray],
        side: int,
        progress: Progress | None,
    ) -> np.ndarray:
        walk = replace(self.embedding, seed=self.embedding.seed + side)
        embedded, _ = walk.embed(oracle, images[0], images[1], progress)
        return embedded
