"""Small, learnable MNIST look-alikes that tests write as real IDX files."""

import os

import numpy as np

from mnistkit import idx


def digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` 28x28 uint8 images whose class is a bright 7x7 block at one of ten places, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % idx.NUM_CLASSES
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 5)
        images[i, 3 + 12 * row: 10 + 12 * row, 1 + 5 * col: 6 + 5 * col] = 255
    return images, labels.astype(np.uint8)


def write_dataset(data_dir, n_train: int = 600, n_test: int = 200, seed: int = 0) -> str:
    """Writes the four MNIST file names into `data_dir` with synthetic contents; returns the directory."""
    os.makedirs(data_dir, exist_ok=True)
    for split, n, split_seed in ((idx.TRAIN, n_train, seed), (idx.TEST, n_test, seed + 1)):
        images, labels = digits(n, split_seed)
        idx.write_idx(os.path.join(data_dir, split.images), images)
        idx.write_idx(os.path.join(data_dir, split.labels), labels)
    return str(data_dir)
