"""The layout registry."""

from __future__ import annotations

import pytest

from onnxprune.common.errors import UserError
from onnxprune.layouts.base import is_fast_on
from onnxprune.layouts.registry import LAYOUTS, get_layout, layouts_fast_on


def test_names_match_classes():
    assert list(LAYOUTS) == ["dense", "block", "channel", "structure", "nm", "unstructured"]
    for name, cls in LAYOUTS.items():
        layout = get_layout(name)
        assert isinstance(layout, cls) and layout.name == name
        for method in ("options", "solve", "materialize"):
            assert callable(getattr(layout, method))


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(UserError, match="dense, block, channel, structure, nm, unstructured"):
        get_layout("sparse")


def test_fast_on():
    assert layouts_fast_on("CPUExecutionProvider") == ["dense", "block", "channel", "structure"]
    assert layouts_fast_on("TensorrtExecutionProvider") == [
        "dense", "block", "channel", "structure", "nm"]
    assert not is_fast_on(get_layout("unstructured"), "CUDAExecutionProvider")
