"""SIGKILL at any moment of writing leaves OUT absent, old or new — complete and loadable — and
IN unchanged, also when the weights go to an external data file.

The writer runs in a forked child (modules already imported, so each kill costs milliseconds).
Deterministic kills: the child reports every ``os.fsync`` / ``os.replace`` it is about to make and
stops before the k-th one, where the parent kills it — every step boundary is hit. Random kills:
the parent kills at random times within the write's measured duration.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.graph.load import load_model
from onnxprune.graph.write import save_model_atomic

FORK = multiprocessing.get_context("fork")


def _model(seed: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((512, 512)).astype(np.float32), f"w{i}")
             for i in range(2)]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w0"], ["h"], name="mm0"),
         helper.make_node("MatMul", ["h", "w1"], ["y"], name="mm1")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 512])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 512])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _signature(model: onnx.ModelProto) -> bytes:
    return numpy_helper.to_array(model.graph.initializer[0]).tobytes()[:64]


def _negated_signature(model: onnx.ModelProto) -> bytes:
    """The signature of what the child writes: IN with every weight negated."""
    return (-numpy_helper.to_array(model.graph.initializer[0])).tobytes()[:64]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _writer(src: Path, out: Path, external: bool, stop_at: int, conn) -> None:
    """Child: load IN, transform it (new weights), write OUT; report each sync/rename first."""
    steps = {"n": 0}

    def hooked(real):
        def call(*args, **kwargs):
            steps["n"] += 1
            conn.send(steps["n"])
            if steps["n"] == stop_at:
                time.sleep(60)  # the parent kills us here
            return real(*args, **kwargs)
        return call

    os.fsync, os.replace = hooked(os.fsync), hooked(os.replace)
    model = load_model(src)
    for tensor in model.graph.initializer:  # the "pruned" model: different weights
        tensor.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(tensor), tensor.name))
    conn.send("ready")
    save_model_atomic(model, out, external_data=external)
    conn.send(("done", steps["n"]))
    os._exit(0)


def _start(src: Path, out: Path, external: bool, stop_at: int = 0):
    parent, child = FORK.Pipe()
    process = FORK.Process(target=_writer, args=(src, out, external, stop_at, child))
    process.start()
    assert parent.poll(30) and parent.recv() == "ready"
    return process, parent


def _kill(process, may_have_finished: bool = False) -> None:
    os.kill(process.pid, signal.SIGKILL)  # an unreaped finished child still has its pid
    process.join(10)
    allowed = (-signal.SIGKILL, 0) if may_have_finished else (-signal.SIGKILL,)
    assert process.exitcode in allowed


def _check(out: Path, src: Path, src_sha: str, old: bytes | None, new: bytes) -> str:
    """OUT absent (only when there was none), the old model or the new one, loadable."""
    assert _sha(src) == src_sha
    if not out.exists():
        assert old is None, "a kill removed the previous output"
        return "absent"
    model = load_model(out)  # complete: parses, checker passes, its data file is whole
    sig = _signature(model)
    assert sig in (old, new)
    return "old" if sig == old else "new"


@pytest.mark.parametrize(("external", "existing"), [(True, True), (True, False), (False, True)])
def test_kill_at_every_step_of_the_write(tmp_path, external, existing):
    src = tmp_path / "in.onnx"
    onnx.save(_model(0), str(src))
    src_sha = _sha(src)
    out = tmp_path / "out.onnx"
    new = _negated_signature(_model(0))
    old = None
    if existing:
        save_model_atomic(_model(1), out, external_data=True)
        old = _signature(_model(1))
    process, conn = _start(src, out, external)  # an unkilled run counts the steps
    while not isinstance(message := conn.recv(), tuple):
        pass
    process.join(30)
    total = message[1]
    assert total >= (3 if external else 2)
    assert _check(out, src, src_sha, old, new) == "new"
    outcomes = []
    for stop_at in range(1, total + 1):
        # Restore the starting state, then kill just before the stop_at-th sync/rename.
        for path in tmp_path.iterdir():
            if path != src:
                path.unlink()
        if existing:
            save_model_atomic(_model(1), out, external_data=True)
        process, conn = _start(src, out, external, stop_at)
        while conn.recv() != stop_at:
            pass
        _kill(process)
        outcomes.append(_check(out, src, src_sha, old, new))
    # Before the rename the old state survives; the rename itself switches to the new one.
    assert outcomes[0] == ("old" if existing else "absent")
    assert outcomes[-1] == "new"
    if external:
        referenced = {e.value for t in onnx.load(str(out), load_external_data=False)
                      .graph.initializer for e in t.external_data if e.key == "location"}
        assert len(referenced) == 1 and (tmp_path / referenced.pop()).is_file()


def test_kill_at_random_moments_of_an_external_data_write(tmp_path):
    src = tmp_path / "in.onnx"
    onnx.save(_model(0), str(src))
    src_sha = _sha(src)
    out = tmp_path / "out.onnx"
    save_model_atomic(_model(1), out, external_data=True)
    old = _signature(_model(1))
    new = _negated_signature(_model(0))
    started = time.monotonic()
    process, _ = _start(src, out, True)
    process.join(30)
    duration = time.monotonic() - started
    rng = random.Random(7)
    seen = []
    for _ in range(12):
        save_model_atomic(_model(1), out, external_data=True)
        process, _ = _start(src, out, True)
        time.sleep(rng.uniform(0, duration))
        _kill(process, may_have_finished=True)
        seen.append(_check(out, src, src_sha, old, new))
    assert set(seen) <= {"old", "new"}
    # Whatever the kills left behind, the next write leaves exactly one data file.
    save_model_atomic(_model(2), out, external_data=True)
    assert len(list(tmp_path.glob("out.onnx.*.data"))) == 1
    assert _signature(load_model(out)) == _signature(_model(2))


def test_external_write_leaves_the_caller_model_intact(tmp_path):
    """The weights go to the data file while serializing and come back to the model after."""
    model = _model(3)
    before = model.SerializeToString()
    out = save_model_atomic(model, tmp_path / "m.onnx", external_data=True)
    assert model.SerializeToString() == before
    stored = onnx.load(str(out), load_external_data=False)
    assert all(t.data_location == TensorProto.EXTERNAL for t in stored.graph.initializer)
    assert _signature(load_model(out)) == _signature(model)
    # Writing it inline afterwards removes the data file the external write made.
    save_model_atomic(model, out)
    assert not list(tmp_path.glob("m.onnx.*.data"))
    assert _signature(load_model(out)) == _signature(model)
