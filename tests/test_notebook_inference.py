"""Dataset inference as the authors' notebooks compute it (reproduced for comparison): the row
construction, the regressor scored on its own images, the harmonic mean of draws."""

from __future__ import annotations

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


@pytest.mark.parametrize(
    "kwargs, message",
    [({"samples": 7}, "even"), ({"samples": 20, "m": 11}, "m must"), ({"draws": 0}, "draws")],
)
def test_bad_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(ModelheistError, match=message):
        NotebookInference(WALK, **kwargs)


def test_too_few_samples_are_refused(digits, di_owner):
    inference = NotebookInference(WALK, samples=400)
    with pytest.raises(ModelheistError, match="needs 400"):
        inference.fit(
            labels_oracle(di_owner), (digits.train.x[:200], digits.train.y[:200]),
            (digits.test.x, digits.test.y),
        )  # fmt: skip
