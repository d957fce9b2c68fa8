"""The inference backends agree: ONNX Runtime predicts what TensorFlow predicts on real MNIST.

One model of the real architecture (``training.build_model``), briefly trained on a subset of
real MNIST so its predictions are meaningful, is exported as a SavedModel and converted to ONNX;
both backends then classify the whole 10,000-image test split.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mnist_server.backends import BACKENDS, ONNX_FILE, BackendError, open_runner
from mnist_server.data import MnistData, load_mnist

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def backends_mnist() -> MnistData:
    return load_mnist()


@pytest.fixture(scope="module")
def backends_version_dir(tmp_path_factory: pytest.TempPathFactory, backends_mnist: MnistData) -> Path:
    import keras

    from mnist_server.backends.onnx_export import export_onnx
    from mnist_server.export import export_model
    from mnist_server.training import build_model

    keras.utils.set_random_seed(7)
    train = backends_mnist.train.head(3000)
    # ~100 steps: enough for the batch-norm statistics to settle (24 steps leave it at chance).
    model = build_model(learning_rate=3e-3, steps=94)
    model.fit(train.images, train.labels, batch_size=64, epochs=2, verbose=0)
    root = tmp_path_factory.mktemp("backend-models")
    version = export_model(model, root, "mnist", "1", {"purpose": "backend agreement test"})
    export_onnx(version.path)
    return version.path


def test_onnx_runtime_agrees_with_tensorflow_on_the_test_set(
    backends_version_dir: Path, backends_mnist: MnistData
) -> None:
    images = np.ascontiguousarray(backends_mnist.test.images)
    labels = backends_mnist.test.labels
    reference = open_runner("tensorflow", backends_version_dir)(images)
    onnx = open_runner("onnx", backends_version_dir)(images)

    assert reference.shape == onnx.shape == (len(images), 10)
    assert onnx.dtype == np.float32
    # The model is real: far above chance, so agreement is not agreement on noise.
    assert (reference.argmax(axis=1) == labels).mean() > 0.8
    np.testing.assert_allclose(onnx, reference, atol=1e-4)
    disagreements = np.flatnonzero(onnx.argmax(axis=1) != reference.argmax(axis=1))
    # Only a near-tie between the top two classes may flip under float reordering.
    for index in disagreements:
        top2 = np.sort(reference[index])[-2:]
        assert top2[1] - top2[0] < 1e-4, f"image {index}: backends disagree on a clear prediction"


def test_every_backend_answers_any_batch_size(backends_version_dir: Path, backends_mnist: MnistData) -> None:
    images = np.ascontiguousarray(backends_mnist.test.images[:70])
    for backend in BACKENDS:
        runner = open_runner(backend, backends_version_dir, threads=1)
        whole = runner(images)
        for size in (1, 7, 64):
            np.testing.assert_allclose(runner(images[:size]), whole[:size], atol=1e-5, err_msg=backend)


def test_onnx_export_is_idempotent_and_leaves_no_temporary_files(backends_version_dir: Path) -> None:
    from mnist_server.backends.onnx_export import export_onnx

    target = backends_version_dir / ONNX_FILE
    before = target.stat().st_mtime_ns
    assert export_onnx(backends_version_dir) == target
    assert target.stat().st_mtime_ns == before
    assert not [p.name for p in backends_version_dir.iterdir() if p.name.startswith(".")]
    # Readable like the SavedModel beside it: the server may run as another user than the trainer.
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(
        (backends_version_dir / "saved_model.pb").stat().st_mode
    )


def test_the_onnx_backend_serves_without_importing_tensorflow(backends_version_dir: Path) -> None:
    script = (
        "import json, sys, numpy as np\n"
        "from mnist_server.backends import open_runner\n"
        f"runner = open_runner('onnx', __import__('pathlib').Path({str(backends_version_dir)!r}))\n"
        "out = runner(np.zeros((2, 28, 28), np.float32))\n"
        "print(json.dumps({'shape': list(out.shape), 'tf': 'tensorflow' in sys.modules, "
        "'platform': runner.platform}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={"PYTHONPATH": str(ROOT / "model_server"), "PATH": "/usr/bin:/bin"},
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"shape": [2, 10], "tf": False, "platform": "onnxruntime_onnx"}


def test_onnx_backend_without_model_onnx_says_how_to_make_it(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match=r"no ONNX model; create it .*onnx_export"):
        open_runner("onnx", tmp_path)


def test_unknown_backend_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="unknown backend 'torch'; expected one of tensorflow, onnx"):
        open_runner("torch", tmp_path)


def test_onnx_export_refuses_to_write_a_conversion_that_disagrees_with_tensorflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from testkit import tiny_keras_model

    from mnist_server.backends import onnx_export
    from mnist_server.export import export_model

    published = export_model(tiny_keras_model(seed=1), tmp_path, "mnist", "1", {}).path
    other = export_model(tiny_keras_model(seed=2), tmp_path, "other", "1", {}).path
    # A faulty conversion: the graph of another model.
    wrong = onnx_export.convert(other)
    monkeypatch.setattr(onnx_export, "convert", lambda version_dir, opset: wrong)

    assert onnx_export.main([str(published)]) == 1

    assert "disagrees with the SavedModel" in capsys.readouterr().err
    assert not (published / ONNX_FILE).exists()
    assert not [p.name for p in published.iterdir() if p.name.startswith(".")]

    monkeypatch.undo()
    assert onnx_export.main([str(published)]) == 0
    assert capsys.readouterr().out.strip() == str(published / ONNX_FILE)
    assert onnx_export.check_agreement(published) <= 1e-4
