"""Thieves on Sesame Street (Krishna et al., ICLR '20): extracting a text classifier with
nonsensical or natural queries and the attacker's own pre-trained encoder.

The attacker sends ``budget`` queries (:mod:`modelheist.attacks.text_queries`: RANDOM word
sequences from a vocabulary, or NATURAL sentences of its own text) and fine-tunes its
pre-trained encoder on the answers: on the probability vectors (the paper's distillation
variant, §3) where the API returns them, on one-hot labels otherwise. The paper fine-tunes
BERT-large for 3 epochs at learning rate 3e-5 (batch 32) on all its layers; ours is MiniLM
(:mod:`modelheist.models.text`) with its top ``tuned_layers`` and a fresh head, so its
learning rate is larger (the head starts from nothing), and its learning rate and epochs,
:data:`RECIPES`, are chosen for each query kind on the validation split (docs/benchmarks.md):
RANDOM answers, nonsense to the victim's topics, take a larger rate than natural ones.

RANDOM queries need no data, only a vocabulary (``vocabulary``): by default ``wordfreq``'s
10,000 most frequent English words (the paper's 10,000 most frequent words, counted on another
corpus than WikiText-103; chosen over Debian's word list on validation agreement,
docs/benchmarks.md), ``wamerican`` (Debian's word list) or a file of one word per line; only
the words the encoder holds whole are drawn; NATURAL queries come from
``AttackerKnowledge.transfer_set``, the attacker's own texts. The surrogate's architecture
is the encoder's (``minilm``); the victim's need not be (VADER is a lexicon).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from rich.progress import Progress

from modelheist.attacks.base import AttackerKnowledge, ExtractionAttack, ask_in_batches
from modelheist.attacks.text_queries import (
    NATURAL_MAX_WORDS,
    RANDOM_MAX_WORDS,
    encoder_vocabulary,
    natural_queries,
    random_word_queries,
)
from modelheist.data.text import frequent_words, load_words
from modelheist.errors import ModelheistError
from modelheist.models.classifier import Classifier
from modelheist.models.text import (  # constants only: transformers loads with the encoder
    ENCODER_LAYERS,
    TEXT_BATCH,
    TUNED_LAYERS,
)
from modelheist.oracle import Oracle
from modelheist.oracle.inputs import takes_text

#: The surrogate's fine-tuning recipe, (learning rate, epochs), for each query kind: the best
#: agreement on the validation split against the owner's fortune-topic victim (seed 0, 5,000
#: probability answers; ``examples/thieves-tuning.toml``, docs/benchmarks.md).
RECIPES: dict[str, tuple[float, int]] = {"random": (5e-4, 16), "natural": (2e-4, 16)}

#: RANDOM's named vocabularies (any other value is a word-list file).
VOCABULARIES = ("wordfreq", "wamerican")


@dataclass
class ThievesAttack(ExtractionAttack):
    """Krishna et al.'s extraction of a text API (see the module docstring)."""

    queries: str = "random"  # random, natural or natural:DATASET
    epochs: int = 0  # 0: RECIPES[query kind]
    lr: float = 0.0  # 0: RECIPES[query kind]
    batch_size: int = TEXT_BATCH
    tuned_layers: int = TUNED_LAYERS
    max_words: int = 0  # 0: the paper's (60 for RANDOM, 50 for NATURAL)
    vocabulary: str = "wordfreq"  # RANDOM's words: wordfreq, wamerican or a word-list file

    name: ClassVar[str] = "thieves"
    title: ClassVar[str] = "Thieves (Krishna et al.)"
    param_help: ClassVar[dict[str, str]] = {
        "queries": "random (word sequences from the vocabulary), natural (the attacker's texts: "
        "its pool of the victim's dataset) or natural:DATASET (another text dataset's pool)",
        "epochs": "fine-tuning epochs of the attacker's encoder on the answers (0: the "
        "validated recipe's for the query kind: "
        + ", ".join(f"{e} for {kind}" for kind, (_, e) in RECIPES.items())
        + ")",
        "lr": "fine-tuning learning rate (AdamW, warm-up and cosine decay; 0: the validated "
        "recipe's: " + ", ".join(f"{lr:g} for {kind}" for kind, (lr, _) in RECIPES.items()) + ")",
        "batch_size": "fine-tuning batch size",
        "tuned_layers": "top layers of the encoder fine-tuned (with a fresh head)",
        "max_words": "longest query in words (0: 60 for random, 50 for natural, as the paper)",
        "vocabulary": "random: wordfreq (the 10,000 most frequent English words, the default), "
        "wamerican (Debian's word list) or a file of one word per line; only words the encoder "
        "holds whole are drawn",
    }

    extracts: ClassVar[Literal["arrays", "text", "translation"]] = "text"

    def __post_init__(self) -> None:
        kind, colon, source = self.queries.partition(":")
        if kind not in ("random", "natural") or (colon and (kind == "random" or not source)):
            raise ModelheistError(
                f"queries must be random, natural or natural:DATASET, got {self.queries!r}"
            )
        if min(self.epochs, self.lr, self.max_words) < 0 or self.batch_size < 1:
            raise ModelheistError(
                "epochs, lr and max_words must be >= 0 (0: the defaults), batch size >= 1"
            )
        lr, epochs = RECIPES[kind]
        self.lr, self.epochs = self.lr or lr, self.epochs or epochs
        if not 0 <= self.tuned_layers <= ENCODER_LAYERS:
            raise ModelheistError(f"tuned_layers must lie in [0, {ENCODER_LAYERS}]")
        if self.vocabulary not in VOCABULARIES and not Path(self.vocabulary).is_file():
            raise ModelheistError(
                "vocabulary must be wordfreq, wamerican or a word-list file, "
                f"got {self.vocabulary!r}"
            )

    def _word_list(self) -> list[str]:
        """RANDOM's vocabulary before the encoder's filter (see ``vocabulary``)."""
        if self.vocabulary == "wordfreq":
            return frequent_words()
        return load_words(None if self.vocabulary == "wamerican" else Path(self.vocabulary))

    def transfer_source(self) -> str | None:
        return self.queries.partition(":")[2] or None

    def needs_transfer_set(self) -> bool:
        return self.queries != "random"

    def _extract(
        self, oracle: Oracle, knowledge: AttackerKnowledge, progress: Progress | None
    ) -> tuple[Classifier, np.ndarray, dict[str, Any]]:
        from modelheist.models.text import (
            TextClassifier,
            build_text_network,
            fit_text_network,
            text_card,
        )
        from modelheist.models.training import TrainConfig

        if not takes_text(oracle.input_shape):
            raise ModelheistError(f"{self.name} extracts text models; this API takes arrays")
        rng = np.random.default_rng(knowledge.seed)
        n = (
            knowledge.budget
            if oracle.remaining is None
            else min(knowledge.budget, oracle.remaining)
        )
        if not self.needs_transfer_set():
            words = encoder_vocabulary(self._word_list())
            x = random_word_queries(words, n, rng, self.max_words or RANDOM_MAX_WORDS)
        else:
            source = [str(t) for t in knowledge.transfer_set]
            x = natural_queries(source, n, rng, self.max_words or NATURAL_MAX_WORDS)
        answer = ask_in_batches(oracle, x, progress)
        targets = answer.soft_targets(oracle.num_classes)  # one-hot where only labels came
        config = TrainConfig(
            epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, seed=knowledge.seed
        )
        network = build_text_network(oracle.num_classes, self.tuned_layers, knowledge.seed)
        losses = fit_text_network(network, x, targets, config, progress, "fine-tune the surrogate")
        card = text_card(
            "surrogate",
            oracle.classes,
            self.tuned_layers,
            {"attack": self.name, "queries": len(x), "output": answer.kind, "epochs": self.epochs},
        )
        details = {
            "query_kind": self.queries.partition(":")[0],
            "queries_sent": len(x),
            "output_kind": answer.kind,
            "loss": losses,  # each fine-tuning epoch's mean loss
        }
        # No index into the source: RANDOM takes words of it, NATURAL may take a sentence of a text.
        return TextClassifier(network, card), np.zeros(0, np.int64), details
