"""mnist-train: configuration, version numbering, and small real training runs on real MNIST."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnist_server import export as export_module
from mnist_server.backends import open_runner
from mnist_server.data import MnistData, load_mnist
from mnist_server.repository import list_versions, resolve
from mnist_server.training import TrainConfig, TrainingError, main, next_version, parse_args, train

METADATA_FIELDS = {
    "name", "version", "architecture", "parameters", "test_accuracy", "test_loss", "validation_accuracy",
    "validation_loss", "epochs", "batch_size", "learning_rate", "learning_rate_schedule", "seed", "subset",
    "data_source", "data_sha256", "train_size", "validation_size", "test_size", "training_seconds",
    "history", "library_versions", "created",
}  # fmt: skip

# --- no TensorFlow needed -----------------------------------------------------------------------


def test_next_version_is_one_more_than_the_highest_numeric_version(tmp_path: Path) -> None:
    assert next_version(tmp_path, "mnist") == "1"
    for name in ("1", "2", "10", "v11-candidate", ".tmp-12-abc"):
        (tmp_path / "mnist" / name).mkdir(parents=True)
    (tmp_path / "mnist" / "13").write_text("a file, not a version")

    assert next_version(tmp_path, "mnist") == "11"
    assert next_version(tmp_path, "other") == "1"


def test_parse_args_maps_every_flag() -> None:
    config = parse_args(
        [
            "--data", "/d/mnist.npz", "--output", "/r", "--name", "digits", "--version", "7", "--epochs", "2",
            "--batch-size", "64", "--learning-rate", "0.01", "--seed", "3", "--subset", "500", "--quiet",
            "--no-onnx",
        ]
    )  # fmt: skip

    assert config == TrainConfig(
        data=Path("/d/mnist.npz"), output=Path("/r"), name="digits", version="7", epochs=2, batch_size=64,
        learning_rate=0.01, seed=3, subset=500, quiet=True, onnx=False,
    )  # fmt: skip
    assert parse_args([]) == TrainConfig()


@pytest.mark.parametrize(
    "argv",
    [
        ["--epochs", "0"],
        ["--batch-size", "x"],
        ["--learning-rate", "-1"],
        ["--subset", "0"],
        ["--name", "Bad_Name"],
    ],
)
def test_bad_flags_exit_with_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        parse_args(argv)

    assert caught.value.code == 2
    assert "mnist-train: error:" in capsys.readouterr().err


def test_config_rejects_bad_values() -> None:
    with pytest.raises(TrainingError, match="epochs must be at least 1"):
        TrainConfig(epochs=0)
    with pytest.raises(TrainingError, match="version 'v/1'"):
        TrainConfig(version="v/1")


def test_an_existing_version_fails_before_any_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "mnist" / "3").mkdir(parents=True)

    assert main(["--output", str(tmp_path), "--version", "3", "--data", str(tmp_path / "absent.npz")]) == 1

    assert "version already exists" in capsys.readouterr().err


def test_missing_data_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--output", str(tmp_path), "--data", str(tmp_path / "absent.npz")]) == 1

    err = capsys.readouterr().err
    assert f"mnist-train: error: {tmp_path / 'absent.npz'}: no such file" in err
    assert "Traceback" not in err
    assert not (tmp_path / "mnist").exists()


# --- real (small) training runs -----------------------------------------------------------------


@pytest.fixture(scope="module")
def small_mnist() -> MnistData:
    """Real MNIST, shrunk: 2,000 training images, 1,000 each to validate and test."""
    full = load_mnist()
    return MnistData(
        full.train.head(2_000), full.validation.head(1_000), full.test.head(1_000), full.source, full.sha256
    )


@pytest.fixture(scope="module")
def small_npz(small_mnist: MnistData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same images as a Keras-style mnist.npz (uint8), so the CLI reads a small file."""

    def to_uint8(images: np.ndarray) -> np.ndarray:
        return np.round(images * 255).astype(np.uint8)

    path = tmp_path_factory.mktemp("data") / "mnist.npz"
    train_images = np.concatenate([small_mnist.train.images[:1_000], small_mnist.validation.images[:200]])
    train_labels = np.concatenate([small_mnist.train.labels[:1_000], small_mnist.validation.labels[:200]])
    with path.open("wb") as handle:
        np.savez_compressed(
            handle,
            x_train=to_uint8(train_images),
            y_train=train_labels,
            x_test=to_uint8(small_mnist.test.images[:300]),
            y_test=small_mnist.test.labels[:300],
        )
    return path


@pytest.mark.slow
def test_a_short_run_exports_a_loadable_version_with_full_metadata(
    small_mnist: MnistData, tmp_path: Path
) -> None:
    import tensorflow as tf

    lines: list[str] = []
    config = TrainConfig(output=tmp_path, epochs=1, batch_size=32, seed=1)

    result = train(config, data=small_mnist, progress=lines.append)

    assert result.model_version == resolve(tmp_path, "mnist", "1")
    assert list_versions(tmp_path, "mnist") == ["1"]
    assert [p.name for p in (tmp_path / "mnist").iterdir()] == ["1"]  # no staging left over
    metadata = json.loads((result.model_version.path / "metadata.json").read_text())
    assert set(metadata) == METADATA_FIELDS
    assert metadata == json.loads(json.dumps(result.metadata))
    assert metadata["test_accuracy"] == pytest.approx(result.test_accuracy)
    assert metadata["test_accuracy"] > 0.85  # 2,000 real images, one epoch
    assert (metadata["train_size"], metadata["validation_size"], metadata["test_size"]) == (
        2_000,
        1_000,
        1_000,
    )
    assert metadata["data_sha256"] == small_mnist.sha256
    assert metadata["parameters"] > 100_000
    assert set(metadata["library_versions"]) == {"python", "tensorflow", "keras", "numpy"}
    assert metadata["created"].endswith("Z")
    assert len(metadata["history"]) == 1 and set(metadata["history"][0]) >= {"loss", "val_accuracy"}
    assert any(line.startswith("epoch 1/1: loss ") and "val_accuracy" in line for line in lines)

    # The exported signature answers with the contract's names, and agrees with the reported accuracy.
    serving = tf.saved_model.load(str(result.model_version.path)).signatures["serving_default"]
    outputs = serving(images=tf.constant(small_mnist.test.images))
    probabilities = outputs["probabilities"].numpy()
    assert probabilities.shape == (1_000, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)
    accuracy = float((probabilities.argmax(axis=1) == small_mnist.test.labels).mean())
    assert accuracy == pytest.approx(result.test_accuracy, abs=1e-3)

    # model.onnx is published with it, and the lean backend agrees with TensorFlow.
    assert (result.model_version.path / "model.onnx").is_file()
    onnx = open_runner("onnx", result.model_version.path)(small_mnist.test.images)
    np.testing.assert_allclose(onnx, probabilities, atol=1e-4)
    assert any("(SavedModel and model.onnx)" in line for line in lines)


@pytest.mark.slow
def test_the_cli_trains_from_an_npz_into_the_next_version(
    small_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "digits" / "7").mkdir(parents=True)  # an older version: the next one is 8

    code = main(
        ["--data", str(small_npz), "--output", str(tmp_path), "--name", "digits", "--epochs", "1",
         "--batch-size", "32", "--subset", "640", "--seed", "5"]
    )  # fmt: skip

    out = capsys.readouterr().out
    assert code == 0
    assert f"exported {tmp_path / 'digits' / '8'}" in out
    assert "epoch 1/1: loss" in out
    metadata = resolve(tmp_path, "digits", "8").metadata()
    assert f"test accuracy {metadata['test_accuracy']:.4f}" in out
    assert (metadata["subset"], metadata["train_size"], metadata["validation_size"]) == (640, 640, 200)
    assert metadata["data_source"] == str(small_npz)
    assert metadata["seed"] == 5 and metadata["batch_size"] == 32


@pytest.mark.slow
def test_the_same_seed_trains_the_same_model(small_mnist: MnistData, tmp_path: Path) -> None:
    tiny = MnistData(
        small_mnist.train.head(320), small_mnist.validation.head(100), small_mnist.test.head(100), "tiny", "-"
    )

    def run(version: str, seed: int) -> dict[str, Any]:
        config = TrainConfig(output=tmp_path, version=version, epochs=1, batch_size=32, seed=seed, onnx=False)
        return train(config, data=tiny).metadata

    first, second, other = run("a", 3), run("b", 3), run("c", 4)

    assert first["history"] == second["history"]
    assert first["test_loss"] == second["test_loss"]
    assert other["history"] != first["history"]


def _interrupt_export_with(monkeypatch: pytest.MonkeyPatch, interrupt: Any) -> None:
    # The rename that publishes a version comes right after the fsync: interrupt just before it.
    def fsync_then_interrupt(path: Path) -> None:
        assert path.is_dir() and (path / "saved_model.pb").is_file()
        assert (path / "model.onnx").is_file()  # published in the same rename
        interrupt()

    monkeypatch.setattr(export_module, "_fsync_tree", fsync_then_interrupt)


def _raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


def _send_sigterm() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


INTERRUPTIONS = {
    "ctrl-c": (_raise_keyboard_interrupt, 130, "interrupted"),
    "sigterm": (_send_sigterm, 143, "terminated"),
}


@pytest.mark.slow
@pytest.mark.parametrize("how", sorted(INTERRUPTIONS))
def test_an_interrupted_export_leaves_no_version(
    small_npz: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    how: str,
) -> None:
    interrupt, expected_code, word = INTERRUPTIONS[how]
    _interrupt_export_with(monkeypatch, interrupt)
    previous_handler = signal.getsignal(signal.SIGTERM)

    code = main(
        ["--data", str(small_npz), "--output", str(tmp_path), "--epochs", "1", "--subset", "64", "--quiet"]
    )

    assert code == expected_code
    assert f"mnist-train: {word}; no model version was written" in capsys.readouterr().err
    assert list((tmp_path / "mnist").iterdir()) == []  # neither a version nor a staging directory
    assert signal.getsignal(signal.SIGTERM) == previous_handler


@pytest.mark.slow
def test_an_onnx_model_that_disagrees_is_not_published(
    small_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mnist_server.backends import onnx_export

    strict = onnx_export.check_agreement
    monkeypatch.setattr(
        onnx_export, "check_agreement", lambda path, onnx_file=None: strict(path, onnx_file, tolerance=-1.0)
    )

    code = main(
        ["--data", str(small_npz), "--output", str(tmp_path), "--epochs", "1", "--subset", "64", "--quiet"]
    )

    assert code == 1
    assert "the ONNX model disagrees with the SavedModel" in capsys.readouterr().err
    assert list((tmp_path / "mnist").iterdir()) == []
