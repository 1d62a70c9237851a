"""Dataset inference as the authors' notebooks compute it (reproduced for comparison): the row
construction, the regressor scored on its own images, the harmonic mean of draws."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from modelheist.api.local import LocalOracle
from modelheist.api.service import PredictionService
from modelheist.defenses.registry import parse_output
from modelheist.errors import ModelheistError
from modelheist.ownership.dataset_inference import BlindWalk
from modelheist.ownership.notebook_inference import NotebookInference, notebook_rows

WALK = BlindWalk(directions=4, steps=30, scale=8.0, seed=0)  # digits are 8x8


def labels_oracle(model):
    return LocalOracle.for_new_client(PredictionService(model, parse_output("labels")), None)


def test_rows_are_the_notebooks_transpose_and_reshape():
    """Our (n, 3 k) layout, noise type by noise type, gives the rows that the notebooks'
    ``tensor.T.reshape(n, 3 k)`` gives for their (n, k directions, 3 types) tensor."""
    n, k = 60, 10
    ours = np.random.default_rng(0).standard_normal((n, 3 * k))
    theirs = torch.from_numpy(ours.reshape(n, 3, k)).permute(0, 2, 1)  # (n, k, 3)
    expected = theirs.permute(2, 1, 0).reshape(n, 3 * k).numpy()  # the notebooks' .T
    rows = notebook_rows(ours)
    assert np.array_equal(rows, expected)
    assert np.array_equal(rows[0], ours[:30, 0])  # one row: 30 images, one direction, one norm
    assert not np.array_equal(rows[0], ours[0])
    straddling = notebook_rows(ours[:50])  # 50 images: row 1 reaches the last image
    assert np.array_equal(straddling[1], np.concatenate([ours[30:50, 0], ours[:10, 1]]))


def test_the_embedding_is_ordered_noise_type_by_noise_type(digits, di_owner):
    """What notebook_rows assumes: Blind Walk's first k columns are L-inf distances, the next k
    L2 and the last k L1 (for the same walk lengths, L-inf < L2 < L1 on 64 pixels)."""
    embedded, _ = WALK.embed(labels_oracle(di_owner), digits.test.x[:30], digits.test.y[:30])
    k = WALK.directions
    linf, l2, l1 = (embedded[:, i * k : (i + 1) * k].mean() for i in range(3))
    assert 0 < linf < l2 < l1


def test_the_regressor_trains_on_the_first_half_of_the_rows_and_scores_the_second(
    digits, di_owner, monkeypatch
):
    import modelheist.ownership.notebook_inference as module
    from modelheist.ownership.dataset_inference import noise_type_statistics, standardised

    trained_on, scored = [], []
    train, score = module.train_regressor, module.score_rows

    def recording_train(features, signs, seed):
        trained_on.append(features)
        return train(features, signs, seed)

    def recording_score(weights, rows):
        scored.append(rows)
        return score(weights, rows)

    monkeypatch.setattr(module, "train_regressor", recording_train)
    monkeypatch.setattr(module, "score_rows", recording_score)
    inference = NotebookInference(WALK, samples=40, m=5, draws=3, seed=0)
    owner = labels_oracle(di_owner)
    reference = inference.fit(
        owner, (digits.train.x[:200], digits.train.y[:200]), (digits.test.x, digits.test.y)
    )
    inference.evaluate(reference, labels_oracle(di_owner))
    private = WALK.embed(owner, *reference.private)[0]
    public = replace(WALK, seed=WALK.seed + 1).embed(owner, *reference.public)[0]
    mean, std = noise_type_statistics(private, ddof=1)
    rows = [notebook_rows(standardised(e, mean, std)) for e in (private, public)]
    assert np.allclose(trained_on[0], np.concatenate([rows[0][:20], rows[1][:20]]))
    assert np.allclose(scored[0], rows[0][20:]) and np.allclose(scored[1], rows[1][20:])


def test_the_notebooks_number_for_the_owner_and_an_independent_model(
    digits, di_owner, di_independent
):
    inference = NotebookInference(WALK, samples=120, m=10, draws=20, seed=0)
    private = (digits.train.x[:200], digits.train.y[:200])
    public = (digits.test.x, digits.test.y)
    reference = inference.fit(labels_oracle(di_owner), private, public)
    owner = inference.evaluate(reference, labels_oracle(di_owner))
    independent = inference.evaluate(reference, labels_oracle(di_independent))
    assert owner["images_per_row"] == 12 and owner["m"] == 10 and owner["draws"] == 20
    for found in (owner, independent):
        assert 0.0 <= found["harmonic_mean_p"] <= 1.0 and 0.0 <= found["all_rows_p"] <= 1.0
    assert owner["score_difference"] > independent["score_difference"]
    assert owner["all_rows_p"] < 1e-3
    again = inference.evaluate(reference, labels_oracle(di_owner))
    assert again == owner  # seeded: the same walks, the same draws
    assert inference.evaluate(reference, None) == owner  # fit's own distances, no query


@pytest.mark.parametrize(
    "kwargs, message",
    [({"samples": 7}, "even"), ({"samples": 20, "m": 11}, "m must"), ({"draws": 0}, "draws")],
)
def test_bad_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(ModelheistError, match=message):
        NotebookInference(WALK, **kwargs)


def test_the_aggregate_is_the_harmonic_mean_of_paired_draws():
    from scipy.stats import hmean, ttest_ind

    from modelheist.ownership.dataset_inference import harmonic_mean_of_draws

    rng = np.random.default_rng(3)
    private, public = rng.normal(0.3, 1, 40), rng.normal(0, 1, 40)
    replay = np.random.default_rng(7)
    picks = [replay.permutation(40)[:10] for _ in range(5)]
    by_hand = hmean(
        [
            ttest_ind(private[p], public[p], equal_var=False, alternative="greater").pvalue
            for p in picks
        ]
    )
    found = harmonic_mean_of_draws(private, public, 10, 5, np.random.default_rng(7))
    assert found == pytest.approx(by_hand)


def test_too_few_samples_are_refused(digits, di_owner):
    inference = NotebookInference(WALK, samples=400)
    with pytest.raises(ModelheistError, match="needs 400"):
        inference.fit(
            labels_oracle(di_owner), (digits.train.x[:200], digits.train.y[:200]),
            (digits.test.x, digits.test.y),
        )  # fmt: skip
