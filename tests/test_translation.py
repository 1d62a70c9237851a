"""Image-to-image models (Szyller et al., "Good Artists Copy", 2021) behind the same API: the
tasks, the victims, serving images in and out (in process and over a real loopback server),
the extraction attack, its CLI, and the ownership schemes' refusal to judge them."""

import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from modelheist.api import npy
from modelheist.api.http_client import HttpOracle
from modelheist.api.http_server import create_app, serve_in_thread
from modelheist.api.ledger import Ledger
from modelheist.api.local import LocalOracle
from modelheist.api.service import PredictionService
from modelheist.attacks.base import AttackerKnowledge
from modelheist.attacks.interruption import AttackInterrupted
from modelheist.data.translation import (
    downsample,
    is_translation,
    load_translation,
    sketch,
    translation_names,
)
from modelheist.defenses import parse_defense
from modelheist.errors import DatasetUnavailableError, InvalidQueryError, ModelheistError
from modelheist.models.image_quality import psnr, ssim
from modelheist.models.store import load_model, save_model


@pytest.fixture(scope="module")
def digits_sr():
    return load_translation("digits-sr", seed=0)


@pytest.fixture(scope="module")
def sr_victim(digits_sr):
    from modelheist.models.translation import train_translation_model, translation_train_config

    return train_translation_model(digits_sr, "srcnn", translation_train_config(30, seed=0))


def test_tasks_pair_inputs_with_the_owners_targets(digits_sr):
    assert "fashion-mnist-sr" in translation_names() and is_translation("digits-sketch")
    assert not is_translation("digits") and not is_translation("fortunes-sr")
    assert digits_sr.input_shape == (1, 4, 4) and digits_sr.output_shape == (1, 8, 8)
    block = digits_sr.train.y[0, 0, :2, :2].mean()
    assert digits_sr.train.x[0, 0, 0, 0] == pytest.approx(block, abs=1e-6)  # 2x2 averages
    flat = np.full((1, 1, 8, 8), 0.5, np.float32)
    assert np.allclose(sketch(flat), 1 - 0.15 * 0.5)  # no stroke where nothing changes
    edge = np.zeros((1, 1, 8, 8), np.float32)
    edge[..., 4:] = 1.0
    drawn = sketch(edge)
    assert drawn.min() >= 0 and drawn.max() <= 1 and drawn[0, 0, 0, 3] < drawn[0, 0, 0, 0]
    faint = edge * 0.25  # a step of 0.25: Sobel magnitude 1, a stroke of half strength
    assert sketch(faint)[0, 0, 4, 3] == pytest.approx(0.5)  # beside the step, on black
    batch = np.concatenate([flat, edge, np.zeros_like(flat)])
    for i in range(3):  # each image on its own: no stroke leaks from its neighbours
        assert np.array_equal(sketch(batch)[i : i + 1], sketch(batch[i : i + 1]))
    sketches = load_translation("digits-sketch", seed=0)
    assert sketches.input_shape == sketches.output_shape == (1, 8, 8)
    assert np.array_equal(sketches.test.x, digits_sr.test.y)  # one split, two tasks
    with pytest.raises(DatasetUnavailableError, match="unknown translation task"):
        load_translation("digits-blur")
    with pytest.raises(DatasetUnavailableError, match="even sizes"):
        downsample(np.zeros((1, 1, 7, 8), np.float32))


def test_image_quality_measures():
    rng = np.random.default_rng(0)
    a = rng.random((3, 1, 8, 8)).astype(np.float32)
    assert psnr(a, a) == 100.0 and ssim(a, a) == pytest.approx(1.0)
    noisy = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    assert 15 < psnr(noisy, a) < 25 and ssim(noisy, a) < 0.99
    with pytest.raises(ValueError, match="one shape"):
        psnr(a, a[:, :, :4, :4])


def test_the_victim_beats_plain_upsampling_and_round_trips(sr_victim, digits_sr, tmp_path):
    test = digits_sr.test
    nearest = test.x.repeat(2, axis=2).repeat(2, axis=3)
    assert sr_victim.card.metrics["test_psnr"] > psnr(nearest, test.y) + 1.0
    assert sr_victim.card.output_shape == [1, 8, 8] and sr_victim.card.classes == []
    loaded = load_model(save_model(sr_victim, tmp_path / "v"))
    assert np.array_equal(loaded.translate(test.x[:5]), sr_victim.translate(test.x[:5]))


def test_the_service_answers_images_counts_and_audits(sr_victim, digits_sr):
    service = PredictionService(sr_victim)
    oracle = LocalOracle.for_new_client(service, budget=10)
    assert oracle.output_kind == "images" and oracle.output_shape == (1, 8, 8)
    answer = oracle.query(digits_sr.test.x[:4])
    assert answer.images.shape == (4, 1, 8, 8) and answer.labels.tolist() == [-1] * 4
    assert np.array_equal(answer.images, sr_victim.translate(digits_sr.test.x[:4]))
    assert oracle.queries_used == 4
    assert [r.label for r in service.ledger.audit()] == [-1] * 4
    for wrong in (np.zeros((2, 1, 8, 8)), np.full((2, 1, 4, 4), 2.0)):
        with pytest.raises(InvalidQueryError):
            oracle.query(wrong)
    with pytest.raises(InvalidQueryError, match="numbers"):
        service.validate(["a sentence"])
    assert oracle.queries_used == 4  # nothing counted for a refused batch
    with pytest.raises(ModelheistError, match="image-to-image model is served without them"):
        PredictionService(sr_victim, [parse_defense("labels")])


def test_images_over_http_as_json_and_npy(sr_victim, digits_sr, tmp_path):
    ledger = Ledger.open(tmp_path / "state")
    key = ledger.add_client("eve", budget=20)
    service = PredictionService(sr_victim, ledger=ledger, name="sr")
    x = digits_sr.test.x[:3]
    with serve_in_thread(create_app(service)) as url:
        for encoding in ("npy", "json"):
            oracle = HttpOracle(url, key, encoding=encoding)
            assert oracle.output_shape == (1, 8, 8) and oracle.output_kind == "images"
            assert np.array_equal(oracle.query(x).images, sr_victim.translate(x))
        headers = {"Authorization": f"Bearer {key}", "Accept": npy.MEDIA_TYPE}
        wrong = httpx.post(
            f"{url}/v1/models/sr/predict",
            content=npy.encode(np.zeros((2, 1, 8, 8), np.float32)),
            headers={**headers, "Content-Type": npy.MEDIA_TYPE},
        )
        assert wrong.status_code == 422 and "shape" in wrong.json()["error"]["message"]
        text = httpx.post(f"{url}/v1/models/sr/predict", json={"inputs": ["hi"]}, headers=headers)
        assert text.status_code == 422 and "not text" in text.json()["error"]["message"]
        body = {"Content-Type": npy.MEDIA_TYPE}
        raw = httpx.post(
            f"{url}/v1/models/sr/predict", content=npy.encode(x[:2]), headers={**headers, **body}
        )
        assert raw.headers["content-type"] == npy.MEDIA_TYPE
        assert (raw.headers["x-queries-used"], raw.headers["x-queries-remaining"]) == ("8", "12")
        assert npy.decode(raw.content).shape == (2, 1, 8, 8)
        refused = {**headers, **body, "Accept": f"{npy.MEDIA_TYPE};q=0, application/json"}
        plain = httpx.post(
            f"{url}/v1/models/sr/predict", content=npy.encode(x[:1]), headers=refused
        )
        assert len(plain.json()["outputs"]) == 1  # q=0: not .npy
        from modelheist.ownership import SCHEMES

        # the kind of model is read from /v1/models: no scheme judges an image-to-image model
        scheme = SCHEMES["dawn"](x, np.zeros(len(x), np.int64), 10, "eve")
        verdict = scheme.verify(HttpOracle(url, key))
        assert verdict.decision == "cannot verify" and "image-to-image" in verdict.reason
    assert ledger.client("eve").queries_used == 9  # refusals and verification not counted


def test_translation_extraction_copies_the_victim(sr_victim, digits_sr):
    from modelheist.attacks.translate import TranslationExtraction
    from modelheist.experiments.translation import TranslationEvaluation

    service = PredictionService(sr_victim)
    oracle = LocalOracle.for_new_client(service, budget=None)
    attack = TranslationExtraction(epochs=30)
    result = attack.run(oracle, AttackerKnowledge(digits_sr.pool.x, budget=400, seed=1))
    assert result.queries_used == oracle.queries_used == 400 == len(set(result.queried))
    assert result.surrogate.card.architecture == "espcn"  # not the victim's srcnn
    figures = TranslationEvaluation.of(sr_victim, digits_sr.test).score(result.surrogate)
    assert figures["ssim_to_victim"] > 0.8 and figures["psnr_to_victim"] > 18
    json.dumps(result.details)


def test_translation_refuses_classifiers_and_keeps_what_it_bought(
    sr_victim, digits_sr, digits_cnn, revoked_after_one_batch
):
    from modelheist.attacks.translate import TranslationExtraction

    classifier = LocalOracle.for_new_client(PredictionService(digits_cnn), budget=None)
    knowledge = AttackerKnowledge(digits_sr.pool.x, budget=10)
    with pytest.raises(ModelheistError, match="cannot learn from probabilities"):
        TranslationExtraction().run(classifier, knowledge)

    oracle = revoked_after_one_batch(PredictionService(sr_victim))
    with pytest.raises(AttackInterrupted) as stopped:
        TranslationExtraction(arch="srcnn", epochs=1).run(
            oracle, AttackerKnowledge(digits_sr.pool.x, 600)
        )
    assert len(stopped.value.log) == 256
    partial = stopped.value.partial_surrogate()
    assert partial.card.training["partial"] is True
    # the attack's network and recipe, not the defaults (ESPCN, SURROGATE_EPOCHS)
    assert partial.card.architecture == "srcnn" and partial.card.training["epochs"] == 1
    assert partial.translate(digits_sr.test.x[:2]).shape == (2, 1, 8, 8)


def test_ownership_schemes_say_they_do_not_apply(sr_victim, triggers):
    from modelheist.ownership import SCHEMES

    oracle = LocalOracle.for_new_client(PredictionService(sr_victim), None)
    evidence = SCHEMES["backdoor-watermark"](triggers).verify(oracle)
    assert evidence.decision == "cannot verify" and "image-to-image" in evidence.reason
    assert oracle.queries_used == 0
    # no scheme marks image-to-image or text models: each says so before a query
    assert all(not {"translation", "text"} & scheme.applies_to for scheme in SCHEMES.values())


def test_ownership_schemes_say_they_do_not_apply_to_text(triggers):
    pytest.importorskip("vaderSentiment", reason="the text extra is not installed")
    from modelheist.models.vader import vader_model
    from modelheist.ownership import SCHEMES

    text_api = LocalOracle.for_new_client(PredictionService(vader_model()), None)
    evidence = SCHEMES["backdoor-watermark"](triggers).verify(text_api)
    assert evidence.decision == "cannot verify" and "the suspect is a text model" in evidence.reason
    assert text_api.queries_used == 0


def test_the_owners_evidence_is_refused_for_models_no_scheme_marks(
    sr_victim, tmp_path, cli_in_process
):
    """Watermarking or fingerprinting an image-to-image or a text model fails in one line
    before any work, as verifying one says "cannot verify" (the two tests above)."""
    folders = {"image-to-image model": tmp_path / "sr"}
    save_model(sr_victim, folders["image-to-image model"])
    try:
        from modelheist.models.vader import vader_model
    except ImportError:  # the text extra is not installed: the image-to-image case alone
        pass
    else:
        folders["a text model"] = tmp_path / "vader"
        save_model(vader_model(), folders["a text model"])
    out = tmp_path / "out"
    for kind, folder in folders.items():
        for command, scheme in (
            (f"watermark --model {folder} --out {out} --secret-out {out}s", "backdoor-watermark"),
            (f"fingerprint dataset-inference --model {folder} --secret-out {out}", "dataset-"),
            (f"fingerprint cae --model {folder} --secret-out {out}", "cae applies to image "),
        ):
            refused = cli_in_process(*command.split())
            assert refused.returncode == 2, (command, refused.stdout)
            message = refused.stderr.strip()
            assert "\n" not in message and scheme in message and kind in message, message
            assert not out.exists() and not Path(f"{out}s").exists()


def test_cli_trains_and_extracts_a_translation_model(tmp_path, cli_in_process, digits_cnn):
    trained = cli_in_process(
        *f"train --dataset digits-sketch --arch srcnn --epochs 2 --out {tmp_path}/v".split()
    )
    assert trained.returncode == 0, trained.stderr
    assert "PSNR" in trained.stdout
    attacked = cli_in_process(
        *f"attack translate --victim {tmp_path}/v --budget 100 --epochs 2 "
        f"--out {tmp_path}/s --json {tmp_path}/r.json".split()
    )
    assert attacked.returncode == 0, attacked.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["queries_used"] == 100
    for figure in ("victim", "surrogate"):  # against the ground truth, each beside the other
        assert report[f"{figure}_psnr"] > 0 and 0 < report[f"{figure}_ssim"] <= 1
    assert report["psnr_to_victim"] > 0 and 0 < report["ssim_to_victim"] <= 1
    assert load_model(tmp_path / "s").card.output_shape == [1, 8, 8]
    ledger = Ledger.open(tmp_path / "state")
    key = ledger.add_client("thief")
    service = PredictionService(load_model(tmp_path / "v"), ledger=ledger, name="sketch")
    with serve_in_thread(create_app(service)) as url:
        remote = f"attack translate --target {url} --api-key {key} --budget 30 --epochs 1"
        unnamed = cli_in_process(*remote.split())
        assert unnamed.returncode == 2 and "--transfer-set TASK" in unnamed.stderr
        stolen = cli_in_process(
            *f"{remote} --transfer-set digits-sketch --out {tmp_path}/r --json {tmp_path}/t.json".split()
        )
    assert stolen.returncode == 0, stolen.stderr
    report = json.loads((tmp_path / "t.json").read_text())
    assert report["queries_used"] == 30 == ledger.client("thief").queries_used
    figures = ("victim_psnr", "victim_ssim", "surrogate_psnr", "surrogate_ssim")
    figures += ("psnr_to_victim", "ssim_to_victim")
    assert all(report[f] is None for f in figures)  # no local victim or ground truth to measure
    assert load_model(tmp_path / "r").card.output_shape == [1, 8, 8]
    np.save(tmp_path / "x.npy", np.full((2, 1, 8, 8), 0.5, np.float32))
    asked = cli_in_process(
        *f"query {tmp_path}/x.npy --victim {tmp_path}/v --json {tmp_path}/q.json".split()
    )
    assert asked.returncode == 0, asked.stderr
    answers = json.loads((tmp_path / "q.json").read_text())
    assert np.asarray(answers["outputs"][1]["image"]).shape == (1, 8, 8)
    save_model(digits_cnn, tmp_path / "cnn")
    for command, needle in [
        (f"attack translate --victim {tmp_path}/cnn --budget 5", "is a classifier"),
        (f"attack knockoff --victim {tmp_path}/v --budget 5", "attack translate"),
        (f"attack translate --victim {tmp_path}/v --budget 5 --output labels", "--output"),
        (f"attack translate --victim {tmp_path}/v --budget 5 --arch unet", "arch must be"),
        (f"train --dataset digits-sr --arch cnn --out {tmp_path}/x", "srcnn or espcn"),
    ]:
        proc = cli_in_process(*command.split())
        assert proc.returncode == 2 and needle in proc.stderr, (command, proc.stderr)
