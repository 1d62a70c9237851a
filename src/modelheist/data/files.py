"""Reading a user's inputs from disk: a ``.npy`` array or a folder of images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from modelheist.errors import ModelheistError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def read_inputs(path: Path, input_shape: tuple[int, ...]) -> tuple[np.ndarray, list[str]]:
    """Inputs of ``input_shape`` from ``path`` and a name for each.

    A ``.npy`` file (never unpickled) holds a batch (n, *shape) or one input (*shape). A folder's
    images (sorted by name) are converted to the model's channels and size and scaled to [0, 1].
    """
    path = Path(path)
    if path.is_dir():
        return _read_images(path, input_shape)
    if not path.is_file():
        raise ModelheistError(f"no such file or folder: {path}")
    if path.suffix != ".npy":
        raise ModelheistError(f"{path}: inputs must be a .npy file or a folder of images")
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        raise ModelheistError(f"{path} is not a numeric .npy array: {exc}") from None
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "iuf":
        raise ModelheistError(f"{path} must hold a numeric array")
    if tuple(x.shape) == tuple(input_shape):
        x = x[None]
    if x.ndim != len(input_shape) + 1 or tuple(x.shape[1:]) != tuple(input_shape):
        raise ModelheistError(
            f"{path} holds an array of shape {x.shape}; the model takes (n, "
            f"{', '.join(map(str, input_shape))})"
        )
    if len(x) == 0:
        raise ModelheistError(f"{path} holds no inputs")
    return x, [f"{path.name}[{i}]" for i in range(len(x))]


def _read_images(folder: Path, input_shape: tuple[int, ...]) -> tuple[np.ndarray, list[str]]:
    from PIL import Image, UnidentifiedImageError

    if len(input_shape) != 3 or input_shape[0] not in (1, 3):
        raise ModelheistError(
            f"the model takes inputs of shape {input_shape}, not images; send a .npy file"
        )
    channels, height, width = input_shape
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ModelheistError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    images = []
    for file in files:
        try:
            with Image.open(file) as image:
                converted = image.convert("L" if channels == 1 else "RGB").resize(
                    (width, height), Image.Resampling.BILINEAR
                )
                array = np.asarray(converted, np.float32) / 255.0
        except (UnidentifiedImageError, OSError) as exc:
            raise ModelheistError(f"cannot read image {file}: {exc}") from None
        images.append(array[None] if channels == 1 else array.transpose(2, 0, 1))
    return np.stack(images), [f.name for f in files]
