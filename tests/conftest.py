"""Shared fixtures: small, real victims trained once per session."""

from __future__ import annotations

import numpy as np
import pytest

from modelheist.data import load_dataset
from modelheist.models import TrainConfig, train_model


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="session")
def digits_cnn(digits):
    return train_model(digits, "cnn", TrainConfig(epochs=15, seed=0))


@pytest.fixture(scope="session")
def triggers(digits):
    """A backdoor watermark's trigger set for the digits CNN: 40 noise images."""
    from modelheist.ownership import TriggerSet

    return TriggerSet.generate(40, digits.input_shape, digits.num_classes, "noise", seed=3)


@pytest.fixture(scope="session")
def marked_cnn(digits, triggers):
    """A digits CNN trained with the trigger set embedded (the Trainer's extra-data hook)."""
    from modelheist.ownership import BackdoorWatermark

    config = TrainConfig(epochs=15, seed=1)
    return train_model(digits, "cnn", config, None, [BackdoorWatermark(triggers, 10)])


@pytest.fixture(scope="session")
def pool_cnn(digits):
    """A digits CNN independent of the owner's: trained on the attacker's pool (same
    distribution, disjoint samples), with its own seed."""
    from dataclasses import replace

    return train_model(replace(digits, train=digits.pool), "cnn", TrainConfig(epochs=15, seed=5))


@pytest.fixture(scope="session")
def di_owner(digits):
    """An owner's model for dataset inference: an MLP fitted closely to 200 private digits
    (dataset inference needs a model that sits farther from its boundary on its own data)."""
    from dataclasses import replace

    from modelheist.data.registry import Split

    private = replace(digits, train=Split(digits.train.x[:200], digits.train.y[:200]))
    return train_model(private, "mlp", TrainConfig(epochs=60, seed=0))


@pytest.fixture(scope="session")
def di_independent(digits):
    """The same recipe on 200 other digits (the attacker's pool): independent of the owner."""
    from dataclasses import replace

    from modelheist.data.registry import Split

    other = replace(digits, train=Split(digits.pool.x[:200], digits.pool.y[:200]))
    return train_model(other, "mlp", TrainConfig(epochs=60, seed=5))


@pytest.fixture(scope="session")
def di_secret(digits, di_owner):
    """Dataset-inference evidence for ``di_owner``: its 200 training digits private, the test
    split public (Blind Walk scaled up for 8x8 images, whose walks the paper's scales would
    leave censored)."""
    from modelheist.api.local import LocalOracle
    from modelheist.api.service import PredictionService
    from modelheist.defenses.registry import parse_output
    from modelheist.ownership.dataset_inference import BlindWalk, DatasetInferenceSecret

    oracle = LocalOracle.for_new_client(PredictionService(di_owner, parse_output("labels")), None)
    return DatasetInferenceSecret.prepare(
        oracle,
        (digits.train.x[:200], digits.train.y[:200]),
        (digits.test.x, digits.test.y),
        revealed=100,
        embedding=BlindWalk(directions=4, steps=30, scale=8.0, seed=0),
        regressor_samples=100,
        seed=0,
    )


@pytest.fixture(scope="session")
def radioactive_mark(digits, digits_cnn):
    """Half of the digits training set marked in the feature space of the owner's own CNN."""
    from modelheist.ownership.radioactive import RadioactiveMarking

    marking = RadioactiveMarking(fraction=0.5, control=100, alignment=200, seed=11)
    return marking.make(digits_cnn, digits.train.x, digits.train.y)


@pytest.fixture(scope="session")
def radioactive_cnn(digits, radioactive_mark):
    """A digits CNN trained on the radioactive data (the Trainer's replace-data hook)."""
    from modelheist.ownership.radioactive import RadioactiveData

    config = TrainConfig(epochs=15, seed=2)
    return train_model(digits, "cnn", config, None, [RadioactiveData(radioactive_mark)])


@pytest.fixture(scope="session")
def planted_cnn(digits_cnn, radioactive_mark):
    """The marking network with its classifier rows pulled toward the carriers: what a model
    that learned the mark looks like to the white-box test (a test double for its statistic;
    on 8x8 digits a network trained on the marked data does not learn the mark measurably)."""
    import copy

    import torch

    from modelheist.models.anatomy import split_head
    from modelheist.models.classifier import TorchClassifier

    module = copy.deepcopy(digits_cnn.module)
    head = split_head(module)[1]
    with torch.no_grad():
        rows = head.weight.norm(dim=1, keepdim=True)
        head.weight += rows * torch.from_numpy(radioactive_mark.carriers).float()
    return TorchClassifier(module, digits_cnn.card)


@pytest.fixture(scope="session")
def cae_setup(digits, digits_cnn):
    """A CAE fingerprint of ``digits_cnn`` generated against 2 extracted surrogates and 2
    independent references; then models not used in generation: the judge's 4 references, 2
    more surrogates and 2 more independent models (digits are 8x8: a wide L-inf ball)."""
    from modelheist.experiments.fingerprints import extracted_surrogates, independent_references
    from modelheist.ownership.cae import CAEGeneration, generate_fingerprint

    surrogates = extracted_surrogates(digits_cnn, digits, 4, 600, seed=0)
    references = independent_references(digits_cnn, digits, 8, seed=100)
    settings = CAEGeneration(epsilon=0.2, steps=100, threshold=0.5, size=60, seed=0, min_size=0)
    fingerprint = generate_fingerprint(
        digits_cnn.module,
        [m.module for m in surrogates[:2]],
        [m.module for m in references[:2]],
        digits.train.x[:300],
        settings,
    )
    return fingerprint, references[2:6], surrogates[2:], references[6:]


@pytest.fixture(scope="session")
def ood_model(digits, tmp_path_factory):
    """A saved binary OOD classifier for digits (in) against uniform noise (out)."""
    from modelheist.defenses.ood_training import train_ood_classifier
    from modelheist.models import save_model

    noise = np.random.default_rng(5).random((300, *digits.input_shape), dtype=np.float32)
    detector = train_ood_classifier(digits.train.x, {"noise": noise}, "mlp", TrainConfig(epochs=3))
    folder = tmp_path_factory.mktemp("ood") / "detector"
    save_model(detector, folder)
    return str(folder)


@pytest.fixture(scope="session")
def misinformation_model(digits, tmp_path_factory):
    """A saved digits model trained to be wrong (adaptive misinformation's f_hat)."""
    from modelheist.defenses.misinformation_training import train_misinformation_model
    from modelheist.models import save_model

    model = train_misinformation_model(digits, "mlp", TrainConfig(epochs=3))
    folder = tmp_path_factory.mktemp("misinformation") / "model"
    save_model(model, folder)
    return str(folder)


@pytest.fixture(scope="session")
def breast_cancer():
    return load_dataset("breast-cancer", seed=0)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def cli_in_process():
    """Run ``modelheist ARGS`` inside this interpreter (Click's test runner), for the many
    one-line-error checks that would each pay a fresh interpreter's start-up; returns an object
    with ``returncode``, ``stdout`` and ``stderr`` like a finished subprocess. The commands that
    run as real processes (test_cli.py, test_serve_cli.py) check the same exit path end to end."""
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from modelheist.cli import app

    runner = CliRunner()

    def invoke(*args):
        result = runner.invoke(app, [str(a) for a in args], catch_exceptions=True)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception  # a bug, not a user error: show its traceback
        return SimpleNamespace(
            returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr
        )

    return invoke


@pytest.fixture
def revoked_after_one_batch():
    """A factory: an oracle of ``service`` for a new client whose key the owner revokes once
    its first batch is answered (an attack cut short after it bought some answers)."""
    from modelheist.api.local import LocalOracle

    class RevokedAfterOneBatch(LocalOracle):
        def _query_batch(self, x):
            answer = super()._query_batch(x)
            self.service.ledger.revoke(self.client_id)
            return answer

    def make(service, client="thief"):
        return RevokedAfterOneBatch(service, service.add_client(client, None))

    return make
