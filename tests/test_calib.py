"""Calibration input: formats, the ORT reader protocol, and mismatch errors naming the input."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from onnxprune.calib.dataset import CalibSet, check_against_model, load_calib_dir, load_calib_reader
from onnxprune.common.errors import UserError
from onnxprune.graph.load import load_model

ROOT = Path(__file__).resolve().parents[1]
MLP = ROOT / "models" / "digits_mlp.onnx"
CALIB = ROOT / "calibration" / "digits_mlp"


def test_shipped_npz_folder_loads_with_labels():
    calib = check_against_model(load_calib_dir(CALIB, 1000), load_model(MLP))
    assert calib.samples == 240 and calib.has_labels
    assert set(calib.batches[0]) == {"input"}
    fit, search, verify = calib.partition()
    assert (fit.samples, search.samples, verify.samples) == (144, 48, 48)
    # Disjoint and in order: no sample the search or the statistics saw is held out.
    firsts = [part.batches[0]["input"][0] for part in (fit, search, verify)]
    assert not np.array_equal(firsts[0], firsts[2]) and not np.array_equal(firsts[1], firsts[2])


def test_partition_of_few_batches_cuts_samples_and_keeps_labels():
    rng = np.random.default_rng(0)
    feed = {"input": rng.random((20, 64)).astype(np.float32)}
    calib = CalibSet((feed,), (np.arange(20),), "test")
    fit, search, verify = calib.partition()
    assert (fit.samples, search.samples, verify.samples) == (10, 5, 5)
    assert list(verify.labels[0]) == list(range(15, 20))
    tiny = CalibSet(({"input": feed["input"][:2]},), (None,), "test")
    assert all(part is tiny for part in tiny.partition())  # too few to hold any out


def test_feed_at_deployment_shape_repeats_real_samples():
    rng = np.random.default_rng(0)
    batches = ({"input": rng.random((3, 64)).astype(np.float32)},
               {"input": rng.random((2, 64)).astype(np.float32)})
    calib = CalibSet(batches, (None, None), "test")
    feed = calib.feed_at({"input": (12, 64)})
    assert feed["input"].shape == (12, 64)
    np.testing.assert_array_equal(feed["input"][5:10], feed["input"][:5])
    assert calib.feed_at({"input": (12, 32)}) is None  # other sample shape: not usable


def test_cap_on_samples():
    calib = load_calib_dir(CALIB, 100)
    assert calib.samples == 100


def test_npy_per_input(tmp_path):
    np.save(tmp_path / "input.npy", np.random.default_rng(0).random((70, 64)))  # float64
    calib = check_against_model(load_calib_dir(tmp_path, 1000), load_model(MLP))
    assert calib.samples == 70 and len(calib.batches) == 3
    assert calib.batches[0]["input"].dtype == np.float32  # float64 cast to the model's float32


def test_missing_input_is_named(tmp_path):
    np.savez(tmp_path / "b.npz", pixels=np.zeros((4, 64), np.float32))
    with pytest.raises(UserError, match="lacks model input.*input"):
        check_against_model(load_calib_dir(tmp_path, 10), load_model(MLP))


def test_wrong_dtype_and_shape_are_named(tmp_path):
    np.savez(tmp_path / "b.npz", input=np.zeros((4, 64), np.int64))
    with pytest.raises(UserError, match="'input' has dtype int64"):
        check_against_model(load_calib_dir(tmp_path, 10), load_model(MLP))
    np.savez(tmp_path / "b.npz", input=np.zeros((4, 63), np.float32))
    with pytest.raises(UserError, match="'input' has size 63 on axis 1"):
        check_against_model(load_calib_dir(tmp_path, 10), load_model(MLP))
    np.savez(tmp_path / "b.npz", input=np.zeros((4, 8, 8), np.float32))
    with pytest.raises(UserError, match="rank 2"):
        check_against_model(load_calib_dir(tmp_path, 10), load_model(MLP))


def test_missing_or_empty_folder(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_calib_dir(tmp_path / "nope", 10)
    with pytest.raises(UserError, match="no .npz or .npy"):
        load_calib_dir(tmp_path, 10)
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot read"):
        load_calib_dir(tmp_path, 10)


def test_ort_calibration_data_reader(tmp_path, monkeypatch):
    (tmp_path / "my_reader.py").write_text(textwrap.dedent("""
        import numpy as np

        class Reader:  # the shape of onnxruntime.quantization.CalibrationDataReader
            def __init__(self):
                self.batches = iter([{"input": np.ones((5, 64), np.float32)}] * 3)

            def get_next(self):
                return next(self.batches, None)

        def make():
            return Reader()
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    calib = load_calib_reader("my_reader:make", 1000)
    assert calib.samples == 15 and not calib.has_labels
    with pytest.raises(UserError, match="no attribute"):
        load_calib_reader("my_reader:nope", 10)
    with pytest.raises(UserError, match="cannot import"):
        load_calib_reader("no_such_module_xyz:make", 10)
    with pytest.raises(UserError, match="MODULE:CALLABLE"):
        load_calib_reader("my_reader", 10)
    sys.modules.pop("my_reader", None)
