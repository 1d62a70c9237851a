"""VADER (Hutto & Gilbert, ICWSM '14) served as a third-party sentiment black box.

VADER scores a text with a hand-built lexicon and rules; its ``compound`` score c lies in
[-1, 1], and its authors' rule reads c >= 0.05 as positive, c <= -0.05 as negative and the rest
as neutral. It has no probabilities, so this wrapper states one calibration: logits
``scale * (-c - t, t - |c|, c - t)`` for (negative, neutral, positive) with t = ``threshold``,
whose arg-max is exactly the authors' rule, softened by ``scale`` (10 by default: c = 0.5
gives the positive class 0.9998, c = 0.1 gives it 0.665, c = 0 gives neutral 0.576). The lexicon ships with the ``vaderSentiment``
package (the ``text`` extra); the card records its digest.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np
from scipy.special import softmax

from modelheist.errors import ModelheistError, ModelLoadError
from modelheist.models.classifier import ModelCard

ARCHITECTURE = "vader"
CLASSES = ("negative", "neutral", "positive")
INSTALL_VADER = "VADER is not installed: pip install 'modelheist[text]' (vaderSentiment)"


@functools.lru_cache(maxsize=1)
def _analyser():
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise ModelheistError(INSTALL_VADER) from None
    return SentimentIntensityAnalyzer()


@functools.lru_cache(maxsize=1)
def lexicon_digest() -> str:
    """SHA-256 of VADER's lexicon file: a card names the exact lexicon it served."""
    try:
        import vaderSentiment.vaderSentiment as module
    except ImportError:
        raise ModelheistError(INSTALL_VADER) from None
    lexicon = Path(module.__file__).with_name("vader_lexicon.txt")
    return hashlib.sha256(lexicon.read_bytes()).hexdigest()


class VaderClassifier:
    """VADER behind the Classifier protocol: strings in, (negative, neutral, positive) out."""

    def __init__(self, card: ModelCard, scale: float = 10.0, threshold: float = 0.05):
        if scale <= 0 or not 0 <= threshold < 1:
            raise ModelheistError("VADER's scale must be > 0 and its threshold in [0, 1)")
        self.card = card
        self.scale = float(scale)
        self.threshold = float(threshold)

    def compound(self, texts: np.ndarray | list[str]) -> np.ndarray:
        """VADER's compound score of each text."""
        analyser = _analyser()
        return np.array([analyser.polarity_scores(str(t))["compound"] for t in texts], np.float64)

    def predict_proba(self, texts: np.ndarray | list[str]) -> np.ndarray:
        c = self.compound(texts)
        t = self.threshold
        # + 1e-9: at c = t exactly the authors' rule says positive (a tie picks neutral).
        logits = self.scale * np.stack([-c - t, t - np.abs(c), c - t + 1e-9], axis=1)
        return softmax(logits, axis=1).astype(np.float32).reshape(len(c), len(CLASSES))

    def calibration(self) -> dict[str, np.ndarray]:
        """The stated calibration as arrays (what a saved model's weights file holds)."""
        return {"scale": np.array([self.scale]), "threshold": np.array([self.threshold])}


def vader_model(dataset: str = "fortunes", scale: float = 10.0) -> VaderClassifier:
    """VADER with its card; ``dataset`` names the texts it is evaluated on (it trains on none)."""
    card = ModelCard(
        architecture=ARCHITECTURE,
        dataset=dataset,
        classes=list(CLASSES),
        input_shape=[],
        training={"lexicon_sha256": lexicon_digest(), "source": "vaderSentiment"},
    )
    return VaderClassifier(card, scale)


def load_vader(arrays: dict[str, np.ndarray], card: ModelCard) -> VaderClassifier:
    """A saved VADER model (see :mod:`modelheist.models.store`)."""
    if card.training.get("lexicon_sha256") != lexicon_digest():
        raise ModelLoadError(
            "this VADER model was saved with another lexicon than the installed one"
        )
    try:
        return VaderClassifier(card, float(arrays["scale"][0]), float(arrays["threshold"][0]))
    except (KeyError, IndexError, ModelheistError) as exc:
        raise ModelLoadError(f"VADER calibration is invalid: {exc}") from None
