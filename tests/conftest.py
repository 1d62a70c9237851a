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
