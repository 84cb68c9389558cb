"""Option parsing and validation of PruneConfig."""

from __future__ import annotations

import pytest

from onnxprune.common.errors import UserError
from onnxprune.config.settings import PruneConfig, parse_nm, parse_search_budget


@pytest.mark.parametrize(("text", "expected"), [
    ("30", (30.0, None)), ("12.5s", (12.5, None)), ("200e", (3600.0, 200)),
    ("50 evals", (3600.0, 50)), ("0", (0.0, None)),
])
def test_search_budget(text, expected):
    assert parse_search_budget(text) == expected


@pytest.mark.parametrize("text", ["fast", "-3", "10m", ""])
def test_bad_search_budget(text):
    with pytest.raises(UserError, match="--search-budget"):
        parse_search_budget(text)


def test_nm_parsing():
    assert parse_nm("2:4") == (2, 4)
    with pytest.raises(UserError):
        parse_nm("2-4")


@pytest.mark.parametrize("kwargs", [
    {}, {"speedup": 1.0}, {"sparsity": 1.0}, {"speedup": 2, "nm": (2, 4)}, {"speedup": 2,
                                                                          "threads": 0},
    {"speedup": 2, "calib_samples": 0},
])
def test_invalid_configs(kwargs):
    with pytest.raises(UserError):
        PruneConfig(**kwargs)
