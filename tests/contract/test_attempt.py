"""The final speed measurement: an undecided result is measured again before it is judged."""

from __future__ import annotations

import onnx
import pytest

from onnxprune.common.runtime import RuntimeConfig
from onnxprune.config.settings import PruneConfig
from onnxprune.contract.attempt import Attempt, Realizer
from onnxprune.latency.measure import PairResult, SpeedResult


def _result(*speedups: float) -> SpeedResult:
    return SpeedResult(tuple(PairResult(s, s, s, 1.0, 1.0 / s, 10) for s in speedups))


class _ScriptedTiming:
    """A timing source that answers the final measurement from a script, and counts calls."""

    def __init__(self, results: list[SpeedResult]) -> None:
        self.results, self.calls = results, []

    def speed(self, dense, pruned, feeds, runtime, *, sessions, seconds, chosen, predicted):
        self.calls.append(sessions)
        return self.results[len(self.calls) - 1]


@pytest.fixture
def realizer_and_calls():
    timing = _ScriptedTiming([_result(2.1, 2.1, 1.9, 2.2, 1.8), _result(2.1, 2.2, 2.1, 2.0, 2.2)])
    realizer = Realizer(PruneConfig(speedup=2.0), onnx.ModelProto(), b"", (),
                        RuntimeConfig(), {"synthetic": {}}, {}, timing=timing)
    return realizer, timing.calls


def test_median_met_but_lower_quartile_not_measures_as_many_sessions_again(realizer_and_calls):
    realizer, calls = realizer_and_calls
    # The script's first answer is undecided for 2x: median 2.1x, lower quartile 1.9x.
    measured = realizer.measure(Attempt({}, onnx.ModelProto()), target=2.0).measured
    assert calls == [5, 5]
    assert len(measured.sessions) == 10
    assert measured.speedup_low == pytest.approx(_result(2.1, 2.1, 1.9, 2.2, 1.8, 2.1, 2.2, 2.1,
                                                         2.0, 2.2).speedup_low)


@pytest.mark.parametrize("target", [1.5, 2.5, None])
def test_a_clear_result_is_measured_once(realizer_and_calls, target):
    realizer, calls = realizer_and_calls
    measured = realizer.measure(Attempt({}, onnx.ModelProto()), target=target).measured
    assert calls == [5] and len(measured.sessions) == 5
