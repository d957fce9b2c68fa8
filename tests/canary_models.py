"""Model versions for the canary tests: good ones trained normally, and a bad one trained on
shuffled labels (it answers every request with HTTP 200, but has learnt nothing: it guesses).

Trained through the trainer's Python API on a subset of real MNIST, in a few seconds each.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_server.data import MnistData, Split, load_mnist
from mnist_server.training import TrainConfig, train

SUBSET = 4000


@dataclass(frozen=True)
class CanaryModels:
    root: Path  # <root>/mnist/<version>/
    good: tuple[str, ...]  # versions trained normally (different seeds)
    bad: str  # trained on shuffled labels
    test: Split  # real test digits none of them saw
    accuracy: dict[str, float]


def train_canary_models(root: Path, good: tuple[str, ...] = ("1", "2"), bad: str = "3") -> CanaryModels:
    full = load_mnist()
    data = MnistData(
        train=full.train.head(SUBSET),
        validation=full.validation.head(500),
        test=full.test.head(2000),
        source=full.source,
        sha256=full.sha256,
    )
    accuracy: dict[str, float] = {}
    for seed, version in enumerate(good, start=1):
        config = TrainConfig(output=root, version=version, epochs=2, batch_size=64, seed=seed, quiet=True)
        accuracy[version] = train(config, data=data).test_accuracy
    labels = np.random.default_rng(14).permutation(data.train.labels)
    shuffled = MnistData(
        train=Split(data.train.images, labels),
        validation=data.validation,
        test=data.test,
        source=data.source,
        sha256=data.sha256,
    )
    config = TrainConfig(output=root, version=bad, epochs=2, batch_size=64, seed=99, quiet=True)
    accuracy[bad] = train(config, data=shuffled).test_accuracy
    return CanaryModels(root, good, bad, data.test, accuracy)
