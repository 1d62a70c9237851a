import gzip

import numpy as np
import pytest

from modelheist.data import attacker_transfer_set, dataset_names, fit_to_shape, load_dataset
from modelheist.data.cifar import RECORD_BYTES, read_cifar10_folder
from modelheist.data.idx import read_idx, write_idx
from modelheist.errors import DatasetUnavailableError


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_idx_round_trip(tmp_path, rng, dtype, name):
    array = (rng.normal(size=(5, 3, 4)) * 50).astype(dtype)
    write_idx(tmp_path / name, array)
    back = read_idx(tmp_path / name)
    assert back.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(back, array)


def test_idx_detects_gzip_by_content_not_name(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    write_idx(tmp_path / "plain-name", array, compress=True)
    assert (tmp_path / "plain-name").read_bytes()[:2] == b"\x1f\x8b"
    np.testing.assert_array_equal(read_idx(tmp_path / "plain-name"), array)


def test_idx_rejects_bad_magic_and_truncation(tmp_path):
    (tmp_path / "junk").write_bytes(b"not an idx file at all")
    with pytest.raises(DatasetUnavailableError, match="bad magic"):
        read_idx(tmp_path / "junk")
    write_idx(tmp_path / "ok", np.zeros((4, 4), np.uint8))
    (tmp_path / "cut").write_bytes((tmp_path / "ok").read_bytes()[:-3])
    with pytest.raises(DatasetUnavailableError, match="truncated"):
        read_idx(tmp_path / "cut")
    (tmp_path / "badgz").write_bytes(gzip.compress(b"xx")[:-4])
    with pytest.raises(DatasetUnavailableError):
        read_idx(tmp_path / "badgz")


def _idx_dataset(folder, rng, n_train=60, n_test=20):
    folder.mkdir()
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(
            folder / f"{prefix}-images-idx3-ubyte.gz",
            rng.integers(0, 256, (n, 10, 10), dtype=np.uint8),
        )
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8) % 3)


def test_idx_folder_dataset(tmp_path, rng):
    _idx_dataset(tmp_path / "mine", rng)
    data = load_dataset(f"idx:{tmp_path / 'mine'}")
    assert data.input_shape == (1, 10, 10)
    assert data.classes == ("0", "1", "2")
    assert len(data.test) == 20 and len(data.validation) == 6
    assert len(data.train) + len(data.pool) == 54
    assert data.train.x.min() >= 0.0 and data.train.x.max() <= 1.0


def test_fashion_mnist_from_env_folder_and_missing_hint(tmp_path, rng, monkeypatch):
    from modelheist.data import registry

    _idx_dataset(tmp_path / "fm", rng)
    monkeypatch.setenv("MODELHEIST_DATA", str(tmp_path / "fm"))
    registry._load_raw.cache_clear()
    try:
        assert load_dataset("fashion-mnist").classes[0] == "0"  # 3 classes: generic names
        monkeypatch.setenv("MODELHEIST_DATA", str(tmp_path / "absent"))
        registry._load_raw.cache_clear()
        with pytest.raises(DatasetUnavailableError, match="apt-get install dataset-fashion-mnist"):
            load_dataset("fashion-mnist")
    finally:
        registry._load_raw.cache_clear()


def test_cifar10_binary_reader(tmp_path, rng):
    def batch(n):
        records = rng.integers(0, 256, (n, RECORD_BYTES), dtype=np.uint8)
        records[:, 0] = np.arange(n) % 10
        return records

    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    train = [batch(7), batch(5)]
    for i, b in enumerate(train, 1):
        (folder / f"data_batch_{i}.bin").write_bytes(b.tobytes())
    (folder / "test_batch.bin").write_bytes(batch(4).tobytes())
    (x, y), (xt, yt) = read_cifar10_folder(tmp_path)
    assert x.shape == (12, 3, 32, 32) and xt.shape == (4, 3, 32, 32)
    np.testing.assert_array_equal(x[0].reshape(-1), train[0][0, 1:])
    np.testing.assert_array_equal(y[:7], np.arange(7) % 10)
    data = load_dataset(f"cifar10:{tmp_path}")
    assert data.input_shape == (3, 32, 32) and data.classes[0] == "airplane"


def test_cifar10_python_batches_are_refused_with_a_hint(tmp_path):
    (tmp_path / "data_batch_1").write_bytes(b"\x80\x04pickle")
    with pytest.raises(DatasetUnavailableError, match="pickles"):
        read_cifar10_folder(tmp_path)


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(DatasetUnavailableError, match="unknown dataset 'nope'.*digits"):
        load_dataset("nope")
    assert "fashion-mnist" in dataset_names()


def test_splits_are_seeded_disjoint_and_stratified(digits):
    again = load_dataset("digits", seed=0)
    np.testing.assert_array_equal(digits.pool.x, again.pool.x)
    other = load_dataset("digits", seed=1)
    assert not np.array_equal(digits.pool.y, other.pool.y)
    rows = {tuple(r) for r in digits.train.x.reshape(len(digits.train), -1).round(4)}
    pool_rows = [tuple(r) for r in digits.pool.x.reshape(len(digits.pool), -1).round(4)]
    test_rows = [tuple(r) for r in digits.test.x.reshape(len(digits.test), -1).round(4)]
    validation = digits.validation
    held = [tuple(r) for r in validation.x.reshape(len(validation), -1).round(4)]
    # scikit-learn's digits has a handful of duplicate images; the splits themselves are disjoint
    for other_rows in (pool_rows, test_rows, held):
        assert sum(r in rows for r in other_rows) < 5
    assert sum(r in set(pool_rows) | set(test_rows) for r in held) < 5
    sizes = (len(digits.train), len(digits.pool), len(validation), len(digits.test))
    assert sum(sizes) == 1797 and abs(len(validation) - 0.1 * (1797 - len(digits.test))) < 2
    for split in (digits.test, validation):
        assert set(np.unique(split.y)) == set(range(10))


def test_a_victim_from_before_the_validation_split_rebuilds_its_split(digits):
    old = load_dataset("digits", seed=0, validation_fraction=0.0)
    assert old.validation is None and len(old.train) + len(old.pool) == len(digits.train) + len(
        digits.pool
    ) + len(digits.validation)
    np.testing.assert_array_equal(old.test.x, digits.test.x)  # the evaluation split is unchanged


def test_fit_to_shape_resizes_and_converts_channels(rng):
    small = rng.uniform(size=(3, 1, 8, 8)).astype(np.float32)
    big = fit_to_shape(small, (3, 28, 28))
    assert big.shape == (3, 3, 28, 28) and big.min() >= 0.0 and big.max() <= 1.0
    assert fit_to_shape(big, (1, 8, 8)).shape == (3, 1, 8, 8)


def test_out_of_distribution_transfer_set_is_used_whole(digits):
    x = attacker_transfer_set("digits", load_dataset("mnist5k"))
    assert x.shape == (1797, 1, 28, 28)
    assert attacker_transfer_set("digits", digits) is digits.pool.x


def _fortune_folder(folder, per_class=4):
    """A small folder of fortune files: three topics, one quotation filed twice, one too long."""
    folder.mkdir()
    for topic in ("cats", "dogs", "fish"):
        quotations = [f"A {topic} saying number {i},\n  over two lines." for i in range(per_class)]
        (folder / topic).write_text("\n%\n".join([*quotations, "Shared by two topics."]) + "\n%\n")
        (folder / f"{topic}.dat").write_bytes(b"\0" * 24)  # strfile's index: not a category
    (folder / "ascii-art").write_text("  /\\_/\\\n ( o.o )\n%\n")
    (folder / "tiny").write_text("Only one.\n%\n")
    (folder / "cats.u8").symlink_to(folder / "cats")


def test_fortunes_read_and_filtered(tmp_path, monkeypatch):
    from modelheist.data.text import load_fortunes, read_fortune_file

    _fortune_folder(tmp_path / "f")
    assert (
        read_fortune_file(tmp_path / "f" / "cats")[0] == "A cats saying number 0, over two lines."
    )
    texts, labels, classes = load_fortunes(tmp_path / "f", min_per_class=3)
    assert classes == ("cats", "dogs", "fish")  # no .dat, .u8 link, ascii-art or small file
    assert texts.dtype == object and len(texts) == 12  # the shared quotation is dropped
    assert "Shared by two topics." not in set(texts)
    assert np.bincount(labels).tolist() == [4, 4, 4]
    with pytest.raises(DatasetUnavailableError, match="fewer than two"):
        load_fortunes(tmp_path / "f", min_per_class=3, max_chars=20)
    with pytest.raises(DatasetUnavailableError, match="apt-get install fortunes"):
        load_fortunes(tmp_path / "missing")


def test_fortunes_dataset_splits_text(tmp_path, monkeypatch):
    from modelheist.data import registry

    _fortune_folder(tmp_path / "f", per_class=150)
    monkeypatch.setenv("MODELHEIST_FORTUNES", str(tmp_path / "f"))
    registry._load_raw.cache_clear()
    try:
        data = load_dataset("fortunes", seed=3)
        assert data.kind == "text" and data.input_shape == () and data.num_classes == 3
        parts = [data.train.x, data.validation.x, data.test.x, data.pool.x]
        assert sum(map(len, parts)) == 450
        assert len(set().union(*map(set, parts))) == 450  # disjoint
        assert all(isinstance(t, str) for t in data.pool.x)
        np.testing.assert_array_equal(load_dataset("fortunes", seed=3).test.x, data.test.x)
        with pytest.raises(DatasetUnavailableError, match="of the victim's kind"):
            attacker_transfer_set("digits", data)
    finally:
        registry._load_raw.cache_clear()


def test_word_list(tmp_path):
    from modelheist.data.text import load_words

    (tmp_path / "words").write_text("A\naardvark\naardvark's\nABC\nzebra\nzebra\ncafé\n")
    assert load_words(tmp_path / "words") == ["aardvark", "zebra"]
    with pytest.raises(DatasetUnavailableError, match="apt-get install wamerican"):
        load_words(tmp_path / "nothing")
