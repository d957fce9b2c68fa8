"""Helpers shared by several test suites (``tests`` is on pytest's pythonpath). `free_port`,
`wait_for` and `wait_until_ok` come from hack/devkit.py, which the demo and the benchmarks share too."""

from __future__ import annotations

from typing import Any

from devkit import WaitTimeoutError, answers_ok, free_port, wait_for, wait_until_ok

__all__ = ["WaitTimeoutError", "answers_ok", "free_port", "tiny_keras_model", "wait_for", "wait_until_ok"]


def tiny_keras_model(seed: int, hidden: int = 16) -> Any:
    """A seeded, untrained dense model with the repository's input and output shapes: enough for
    tests of serving, metrics and export, and quick to build."""
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((28, 28)),
            keras.layers.Flatten(),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
