"""The Trainer and its protection hooks: each hook is called as documented, a protection is
recorded on the model card, and the hooks carry what training-time protections need (Opacus's
DP-SGD through `prepare`, PGD adversarial examples through `transform_batch`)."""

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch

from modelheist.errors import ModelheistError
from modelheist.models import TrainConfig, TrainingProtection, fine_tune, train_model
from modelheist.models.adversarial import sign_steps
from modelheist.models.architectures import build_network, normalisation_stats
from modelheist.models.training import BatchSource, Trainer, train_network


@dataclass
class Recording(TrainingProtection):
    """Counts its hook calls and adds ``extra`` copies of the first inputs, relabelled 0."""

    name: ClassVar[str] = "recording"
    extra: int = 5

    def __post_init__(self):
        self.calls = {"extra_data": 0, "prepare": 0, "transform_batch": 0}
        self.rows = 0

    def extra_data(self, x, targets):
        self.calls["extra_data"] += 1
        return x[: self.extra], np.zeros(self.extra, targets.dtype)

    def prepare(self, run):
        self.calls["prepare"] += 1
        run.notes["rows"] = len(run.x)

    def transform_batch(self, run, x, targets):
        self.calls["transform_batch"] += 1
        self.rows += len(x)
        return x, targets


def test_hooks_are_called_in_order_and_recorded_on_the_card(digits):
    protection = Recording(extra=7)
    model = train_model(digits, "mlp", TrainConfig(epochs=2, batch_size=100), None, [protection])
    n = len(digits.train) + 7
    steps = -(-n // 100)
    assert protection.calls == {"extra_data": 1, "prepare": 1, "transform_batch": 2 * steps}
    assert protection.rows == 2 * n  # every training row, extra data included, each epoch
    assert model.card.protections == [{"name": "recording", "extra": 7}]
    assert model.card.metrics["test_accuracy"] > 0.8


def test_without_protections_training_is_deterministic(digits):
    mean, std = normalisation_stats(digits.train.x)
    outputs = []
    for _ in range(2):
        net = build_network("cnn", digits.input_shape, 10, mean, std, seed=3)
        losses = train_network(
            net, digits.train.x, digits.train.y, TrainConfig(epochs=2, seed=3, augment=True)
        )
        with torch.no_grad():
            outputs.append((losses, net(torch.from_numpy(digits.test.x[:20])).numpy()))
    assert outputs[0][0] == outputs[1][0]
    np.testing.assert_array_equal(outputs[0][1], outputs[1][1])


def test_extra_data_must_match_the_training_data(digits):
    class Misshapen(Recording):
        def extra_data(self, x, targets):
            return np.zeros((3, 2)), np.zeros(3, np.int64)

    with pytest.raises(ModelheistError, match="does not match"):
        train_model(digits, "mlp", TrainConfig(epochs=1), None, [Misshapen()])
    with pytest.raises(ModelheistError, match="need a network"):
        train_model(digits, "logreg", TrainConfig(), None, [Recording()])


def test_fine_tuning_leaves_the_original_and_extends_the_card(digits, digits_cnn):
    before = digits_cnn.predict_proba(digits.test.x[:10])
    tuned = fine_tune(
        digits_cnn, digits.pool.x, digits.pool.y, TrainConfig(epochs=1, lr=1e-3), [Recording()]
    )
    np.testing.assert_array_equal(digits_cnn.predict_proba(digits.test.x[:10]), before)
    assert not np.array_equal(tuned.predict_proba(digits.test.x[:10]), before)
    assert tuned.card.training["fine_tuning"][0]["inputs"] == len(digits.pool)
    assert tuned.card.protections == [{"name": "recording", "extra": 5}]
    assert digits_cnn.card.protections == []


class _LoaderBatches(BatchSource):
    """A torch DataLoader as the Trainer's batch source (Opacus samples its own batches)."""

    def __init__(self, loader):
        self.loader = loader

    def __len__(self):
        return len(self.loader)

    def epoch(self):
        yield from self.loader


@dataclass
class OpacusDpSgd(TrainingProtection):
    """DP-SGD through Opacus, wired through the `prepare` hook alone: the hook replaces the
    model, the optimizer and the batches with Opacus's (per-example clipping and noise,
    Poisson sampling) and the card records the epsilon the accountant spent."""

    name: ClassVar[str] = "dp-sgd"
    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    delta: float = 1e-3

    def prepare(self, run):
        from opacus import PrivacyEngine

        dataset = torch.utils.data.TensorDataset(run.x, run.targets)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=run.config.batch_size, generator=run.generator
        )
        self.engine = PrivacyEngine(secure_mode=False)
        run.module, run.optimizer, private = self.engine.make_private(
            module=run.module,
            optimizer=run.optimizer,
            data_loader=loader,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
        )
        run.batches = _LoaderBatches(private)

    def card_entry(self, run):
        return {**super().card_entry(run), "epsilon": self.engine.get_epsilon(self.delta)}


@pytest.mark.filterwarnings("ignore:Secure RNG turned off", "ignore:Full backward hook")
def test_dp_sgd_fits_the_prepare_hook_with_the_group_norm_cnn(digits):
    from opacus.validators import ModuleValidator

    mean, std = normalisation_stats(digits.train.x)
    assert (
        ModuleValidator.validate(build_network("cnn-gn", (1, 8, 8), 10, mean, std), strict=False)
        == []
    )
    assert ModuleValidator.validate(build_network("cnn", (1, 8, 8), 10, mean, std), strict=False)
    config = TrainConfig(epochs=6, batch_size=64, lr=5e-3, seed=0)
    model = train_model(digits, "cnn-gn", config, None, [OpacusDpSgd()])
    (entry,) = model.card.protections
    assert entry["name"] == "dp-sgd" and 0 < entry["epsilon"] < 100
    assert model.card.metrics["test_accuracy"] > 0.5  # noisy, clipped, but learning


@dataclass
class PgdTraining(TrainingProtection):
    """Madry-style adversarial training through `transform_batch`: each batch is replaced by
    PGD examples of it under the current model (the shared `models.adversarial` routine)."""

    name: ClassVar[str] = "adversarial-training"
    epsilon: float = 0.1
    steps: int = 3

    def __post_init__(self):
        self.batches = 0

    def transform_batch(self, run, x, targets):
        self.batches += 1
        labels = targets.argmax(1) if run.soft else targets
        adversarial = sign_steps(
            run.module,
            x.numpy(),
            labels.numpy(),
            self.epsilon,
            self.steps,
            step_size=self.epsilon / 2,
            random_start=True,
            bounds=(0.0, 1.0),
            seed=self.batches,
        )
        run.module.train()
        return torch.from_numpy(adversarial), targets


def test_adversarial_training_fits_the_transform_batch_hook(digits, digits_cnn):
    config = TrainConfig(epochs=15, seed=0)
    robust = train_model(digits, "cnn", config, None, [PgdTraining()])
    x, y = digits.test.x, digits.test.y

    def adversarial_accuracy(model):
        attacked = sign_steps(
            model.module, x, y, 0.1, 5, step_size=0.05, random_start=True, bounds=(0.0, 1.0)
        )
        return float((model.predict_proba(attacked).argmax(1) == y).mean())

    assert adversarial_accuracy(robust) > adversarial_accuracy(digits_cnn) + 0.1
    assert robust.card.protections == [{"name": "adversarial-training", "epsilon": 0.1, "steps": 3}]


def test_sign_steps_stay_in_the_ball_and_the_domain(digits, digits_cnn):
    x, y = digits.test.x[:50], digits.test.y[:50]
    out = sign_steps(digits_cnn.module, x, y, 0.2, 4, random_start=True, bounds=(0.0, 1.0))
    assert out.dtype == np.float32 and np.abs(out - x).max() <= 0.2 + 1e-6
    assert out.min() >= 0.0 and out.max() <= 1.0
    fgsm = sign_steps(digits_cnn.module, x, y, 0.2, 1)  # one step of epsilon: FGSM
    moved = np.abs(fgsm - x)
    assert (np.isclose(moved, 0.2, atol=1e-6) | (moved == 0)).all()
    towards = sign_steps(digits_cnn.module, x, (y + 1) % 10, 0.3, 10, targeted=True)
    hit = (digits_cnn.predict_proba(towards).argmax(1) == (y + 1) % 10).mean()
    assert hit > 0.5


def test_training_device_defaults_to_the_cpu_and_refuses_what_it_cannot_use(monkeypatch):
    from modelheist.models.device import DEVICE_VARIABLE, training_device

    monkeypatch.delenv(DEVICE_VARIABLE, raising=False)
    assert training_device().type == "cpu"
    monkeypatch.setenv(DEVICE_VARIABLE, "auto")
    assert training_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv(DEVICE_VARIABLE, "toaster")
    with pytest.raises(ModelheistError, match="not a device"):
        training_device()
    if not torch.cuda.is_available():
        monkeypatch.setenv(DEVICE_VARIABLE, "cuda")
        with pytest.raises(ModelheistError, match="no CUDA GPU"):
            training_device()
        with pytest.raises(ModelheistError, match="no CUDA GPU"):
            Trainer(TrainConfig(epochs=1)).fit(
                torch.nn.Linear(2, 2), np.zeros((4, 2), np.float32), np.zeros(4, np.int64)
            )
