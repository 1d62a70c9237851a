"""The Trainer and its protection hooks: each hook is called as documented, a protection is
recorded on the model card, and the training-time protections built on them: DP-SGD through
Opacus (`prepare` and `finish`) and PGD adversarial training (`transform_batch`)."""

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch

from modelheist.errors import ModelheistError
from modelheist.models import TrainConfig, TrainingProtection, fine_tune, train_model
from modelheist.models.adversarial import pgd, sign_steps
from modelheist.models.adversarial_training import PgdAdversarialTraining, adversarial_accuracy
from modelheist.models.architectures import build_network, normalisation_stats
from modelheist.models.privacy import DpSgd
from modelheist.models.store import load_model, save_model
from modelheist.models.training import Trainer, train_network


@dataclass
class Recording(TrainingProtection):
    """Counts its hook calls and adds ``extra`` copies of the first inputs, relabelled 0."""

    name: ClassVar[str] = "recording"
    extra: int = 5

    def __post_init__(self):
        self.calls = {
            "extra_data": 0,
            "prepare": 0,
            "transform_batch": 0,
            "end_epoch": 0,
            "finish": 0,
        }
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

    def end_epoch(self, run, epoch):
        assert epoch == self.calls["end_epoch"]
        self.calls["end_epoch"] += 1

    def finish(self, run):
        self.calls["finish"] += 1


def test_hooks_are_called_in_order_and_recorded_on_the_card(digits):
    protection = Recording(extra=7)
    model = train_model(digits, "mlp", TrainConfig(epochs=2, batch_size=100), None, [protection])
    n = len(digits.train) + 7
    steps = -(-n // 100)
    assert protection.calls == {
        "extra_data": 1,
        "prepare": 1,
        "transform_batch": 2 * steps,
        "end_epoch": 2,
        "finish": 1,
    }
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


def test_sgd_with_momentum_trains_and_is_what_dp_sgd_makes_private(digits):
    config = TrainConfig(epochs=4, batch_size=64, lr=0.05, optimizer="sgd", seed=0)
    model = train_model(digits, "cnn-gn", config)
    assert model.card.training["optimizer"] == "sgd" and model.card.training["momentum"] == 0.9
    assert model.card.metrics["test_accuracy"] > 0.8

    @dataclass
    class OptimiserSeen(TrainingProtection):  # what DP-SGD made private, seen at the end
        name: ClassVar[str] = "optimiser-seen"

        def end_epoch(self, run, epoch):
            self.private = type(run.optimizer.original_optimizer)

    seen = OptimiserSeen()
    private = train_model(digits, "cnn-gn", config, None, [DpSgd(epsilon=3.0), seen])
    assert seen.private is torch.optim.SGD  # DP-SGD proper, not DP-Adam
    assert private.card.metrics["test_accuracy"] > 0.3  # noisy, clipped, but learning
    for settings, message in [
        ({"optimizer": "rmsprop"}, "adamw or sgd"),
        ({"optimizer": "sgd", "momentum": 1.0}, "momentum"),
    ]:
        with pytest.raises(ModelheistError, match=message):
            TrainConfig(**settings)


def test_no_trigger_step_is_taken_at_learning_rate_zero(digits):
    """After the last epoch the schedule's rate is 0: the after-epoch watermark takes no step
    there, so that, under DP-SGD, none is counted. One epoch: nothing but the data's steps."""
    from modelheist.ownership.watermark import BackdoorWatermark, TriggerSet

    triggers = TriggerSet.generate(20, digits.input_shape, 10, seed=1)
    config = TrainConfig(epochs=1, batch_size=64, seed=0)
    plain = train_model(digits, "cnn-gn", config, None, [DpSgd(epsilon=3.0)])
    watermark = BackdoorWatermark(triggers, schedule="after-epoch", batch_size=8)
    marked = train_model(digits, "cnn-gn", config, None, [watermark, DpSgd(epsilon=3.0)])
    steps = [
        next(e["steps"] for e in m.card.protections if e["name"] == "dp-sgd")
        for m in (plain, marked)
    ]
    assert steps[0] == steps[1] == math.ceil(len(digits.train) / 64)
    np.testing.assert_array_equal(
        plain.predict_proba(digits.test.x[:5]), marked.predict_proba(digits.test.x[:5])
    )


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


@pytest.mark.filterwarnings("ignore:Secure RNG turned off", "ignore:Full backward hook")
def test_dp_sgd_spends_its_budget_and_hands_back_a_plain_network(digits, tmp_path):
    from opacus.validators import ModuleValidator

    mean, std = normalisation_stats(digits.train.x)
    assert (
        ModuleValidator.validate(build_network("cnn-gn", (1, 8, 8), 10, mean, std), strict=False)
        == []
    )
    config = TrainConfig(epochs=6, batch_size=64, lr=5e-3, seed=0)
    model = train_model(digits, "cnn-gn", config, None, [DpSgd(epsilon=3.0)])
    (entry,) = model.card.protections
    assert entry["name"] == "dp-sgd" and entry["epsilon"] == 3.0 and entry["delta"] == 1e-3
    assert 2.5 < entry["epsilon_spent"] <= 3.0 + 0.05  # the budget, spent
    assert entry["noise_multiplier"] > 0.3
    assert entry["steps"] == 6 * math.ceil(len(digits.train) / 64)  # Poisson batches per epoch
    assert model.card.metrics["test_accuracy"] > 0.5  # noisy, clipped, but learning
    assert not any(name.startswith("_module") for name in model.module.state_dict())
    save_model(model, tmp_path / "dp")
    reloaded = load_model(tmp_path / "dp")
    np.testing.assert_allclose(
        reloaded.predict_proba(digits.test.x[:5]), model.predict_proba(digits.test.x[:5]), atol=1e-6
    )
    again = train_model(digits, "cnn-gn", config, None, [DpSgd(epsilon=3.0)])
    np.testing.assert_array_equal(  # seeded sampling and noise: reproducible
        again.predict_proba(digits.test.x[:5]), model.predict_proba(digits.test.x[:5])
    )


@pytest.mark.filterwarnings("ignore:Secure RNG turned off", "ignore:Full backward hook")
def test_dp_sgd_can_cover_a_watermarks_trigger_steps_and_then_spends_only_its_budget(digits):
    """A watermark's trigger batches after each epoch go through DP-SGD's optimizer and its
    accountant counts them: on top of the budget by default (the conflicts study's), within it
    with ``cover_other_steps`` (more noise), the steps as the watermark predicts them."""
    from modelheist.models.training_defenses import parse_training_defense
    from modelheist.ownership.watermark import BackdoorWatermark, TriggerSet

    triggers = TriggerSet.generate(20, digits.input_shape, 10, seed=1)
    config = TrainConfig(epochs=4, batch_size=64, lr=5e-3, seed=0)
    entries = {}
    for cover in (False, True):
        watermark = BackdoorWatermark(triggers, schedule="after-epoch", batch_size=8, rounds=3)
        dp = DpSgd(epsilon=3.0, cover_other_steps=cover)
        entries[cover] = train_model(digits, "cnn-gn", config, None, [watermark, dp]).card
    trigger_steps = 3 * 3 * int(20 / 8)  # after 3 of 4 epochs, 3 passes of 2 batches
    data_steps = 4 * math.ceil(len(digits.train) / 64)
    plain, covered = (entries[c].protections[1] for c in (False, True))
    assert plain["steps"] == covered["steps"] == data_steps + trigger_steps
    assert plain["epsilon_spent"] > 3.0 + 0.1  # the trigger steps come on top of the budget
    assert 2.5 < covered["epsilon_spent"] <= 3.0 + 0.05  # covered: the budget, spent
    assert covered["noise_multiplier"] > plain["noise_multiplier"]
    assert covered["other_steps_covered"] == trigger_steps and covered["cover_other_steps"]
    assert "cover_other_steps" not in plain and "other_steps_covered" not in plain
    assert parse_training_defense("dp-sgd:cover_other_steps=yes") == DpSgd(cover_other_steps=True)
    outside = BackdoorWatermark(triggers, schedule="after-epoch", outside_private=True)
    one_epoch = TrainConfig(epochs=1, batch_size=64)
    run = Trainer(one_epoch, [outside]).fit(
        build_network("mlp", digits.input_shape, 10, *normalisation_stats(digits.train.x)),
        digits.train.x[:64],
        digits.train.y[:64],
    )
    assert outside.private_steps(run) == 0  # plain steps, outside DP-SGD's optimizer
    inside = BackdoorWatermark(triggers, schedule="after-epoch", batch_size=8)
    assert inside.private_steps(run) == 2  # a one-step run's rate is not 0 after it: it trains


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"epsilon": 0.0}, "epsilon > 0"),
        ({"delta": 1.0}, "delta"),
        ({"max_grad_norm": -1.0}, "clipping norm"),
        ({"accountant": "moments"}, "accountant"),
    ],
)
def test_dp_sgd_settings_out_of_range_are_one_line_errors(settings, message):
    with pytest.raises(ModelheistError, match=message):
        DpSgd(**settings)


def test_dp_sgd_refuses_batch_norm_and_an_unreachable_budget_before_training(digits):
    protection = Recording()
    with pytest.raises(ModelheistError, match="BatchNorm.*cnn-gn"):
        train_model(digits, "cnn", TrainConfig(epochs=1), None, [protection, DpSgd()])
    mean, std = normalisation_stats(digits.train.x)
    network = build_network("cnn-gn", (1, 8, 8), 10, mean, std)
    with pytest.raises(ModelheistError, match="cannot reach epsilon 1e-09"):
        DpSgd(epsilon=1e-9, delta=1e-9).check(network, 1000, 1000, 1000)
    assert protection.calls["transform_batch"] == 0  # refused before the first step


def test_pgd_on_tensors_matches_sign_steps(digits, digits_cnn):
    x, y = digits.test.x[:40], digits.test.y[:40]
    expected = sign_steps(digits_cnn.module, x, y, 0.2, 5, 0.05, bounds=(0.0, 1.0))
    got = pgd(
        digits_cnn.module, torch.from_numpy(x), torch.from_numpy(y), 0.2, 5, 0.05,
        random_start=False, bounds=(0.0, 1.0),
    )  # fmt: skip
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)
    started = pgd(
        digits_cnn.module, torch.from_numpy(x), torch.from_numpy(y), 0.2, 0, 0.05,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    moved = (started - torch.from_numpy(x)).abs()
    assert 0 < float(moved.max()) <= 0.2 + 1e-6  # a random start inside the ball


def test_adversarial_training_buys_adversarial_accuracy(digits, digits_cnn):
    attack = {"epsilon": 0.2, "step_size": 0.05, "steps": 5}
    robust = train_model(
        digits, "cnn", TrainConfig(epochs=15, seed=0), None, [PgdAdversarialTraining(**attack)]
    )
    x, y = digits.test.x, digits.test.y
    assert adversarial_accuracy(robust, x, y, **attack) > (
        adversarial_accuracy(digits_cnn, x, y, **attack) + 0.1
    )
    assert (
        adversarial_accuracy(digits_cnn, x, y, **attack) < digits_cnn.card.metrics["test_accuracy"]
    )
    assert robust.card.protections == [{"name": "adversarial-training", **attack}]
    assert PgdAdversarialTraining().params() == {"epsilon": 0.125, "step_size": 0.005, "steps": 25}
    with pytest.raises(ModelheistError, match="epsilon in"):
        PgdAdversarialTraining(epsilon=0.0)


@pytest.mark.filterwarnings("ignore:Secure RNG turned off", "ignore:Full backward hook")
def test_dp_sgd_and_adversarial_training_combine(digits):
    attack = PgdAdversarialTraining(epsilon=0.1, step_size=0.05, steps=2)
    config = TrainConfig(epochs=3, batch_size=64, lr=5e-3, seed=0)
    model = train_model(digits, "cnn-gn", config, None, [DpSgd(epsilon=8.0), attack])
    names = [entry["name"] for entry in model.card.protections]
    assert names == ["dp-sgd", "adversarial-training"]
    assert model.card.protections[0]["epsilon_spent"] <= 8.0 + 0.05
    assert model.card.metrics["test_accuracy"] > 0.3


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


def test_length_grouped_batches_cover_every_input_once_in_batches_of_similar_length():
    from modelheist.models.training import LengthGroupedBatches, ShuffledBatches

    lengths = np.random.default_rng(0).integers(1, 61, size=1000)
    x = torch.from_numpy(lengths.astype(np.float32)).unsqueeze(1)  # each input its own length
    ids = torch.arange(1000)
    grouped = LengthGroupedBatches(x, ids, 32, torch.Generator().manual_seed(0), lengths, 10)
    shuffled = ShuffledBatches(x, ids, 32, torch.Generator().manual_seed(0))

    def padded(source):
        batches = list(source.epoch())
        assert len(batches) == len(source)
        assert sorted(torch.cat([t for _, t in batches]).tolist()) == list(range(1000))
        return sum(float(b.max()) * len(b) for b, _ in batches) / lengths.sum()

    assert padded(grouped) < 1.25 < 1.6 < padded(shuffled)  # 1.11x grouped, 1.9x shuffled

    def epochs(n):
        source = LengthGroupedBatches(x, ids, 32, torch.Generator().manual_seed(0), lengths, 10)
        return [[t.tolist() for _, t in source.epoch()] for _ in range(n)]

    first, second = epochs(2)
    assert first != second  # reshuffled each epoch
    assert epochs(1) == [first]  # seeded
    with pytest.raises(ModelheistError, match="lengths for"):
        LengthGroupedBatches(x, ids, 32, torch.Generator(), lengths[:5])
