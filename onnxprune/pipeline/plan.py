"""The plan of a pruning run: what was chosen, and the inputs it was chosen for.

Timing noise moves the allocation, so the same ``--speedup`` command can write different models on
different runs. The plan (``--save-plan plan.json``) records the outcome of the timed part — the
option chosen per candidate — together with what the rest of the run is a pure function of: the
input model's digest, the calibration data's digest and the settings that decide the candidates.
``onnxprune apply`` (:mod:`onnxprune.pipeline.replay`) re-materializes it without timing; the mask
digests let it prove that its reconstruction picked the same weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper

from onnxprune.calib.dataset import CalibSet
from onnxprune.common.errors import UserError
from onnxprune.config.settings import NodeOverride, PruneConfig
from onnxprune.graph.candidates import Candidate
from onnxprune.graph.load import external_tensors
from onnxprune.graph.write import write_bytes_atomic
from onnxprune.layouts.base import LayoutOption, PrunedWeight

PLAN_FORMAT = 1

# The PruneConfig fields that decide the candidates, their structures and their reconstruction.
_CONFIG_FIELDS = ("speedup", "sparsity", "nm", "layouts", "levels", "provider", "threads",
                  "shapes", "calib_samples", "exclude", "seed", "sequential", "error_feedback",
                  "sparse_storage", "overrides", "fix")


def _hash_file(digest, path: Path) -> None:
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)


def model_digest(path: str | os.PathLike[str]) -> str:
    """sha256 of the ``.onnx`` file and, in order of first use, its external data files."""
    model_path = Path(path)
    digest = hashlib.sha256()
    _hash_file(digest, model_path)
    model = onnx.load(str(model_path), load_external_data=False)
    seen: list[str] = []
    for tensor in external_tensors(model):
        location = external_data_helper.ExternalDataInfo(tensor).location
        if location not in seen:
            seen.append(location)
    for location in seen:
        target = model_path.parent / location
        if target.is_file():
            digest.update(location.encode())
            _hash_file(digest, target)
    return digest.hexdigest()


def calibration_digest(calib: CalibSet | None) -> str | None:
    """sha256 over every batch's input names, dtypes, shapes and values, and the labels."""
    if calib is None:
        return None
    digest = hashlib.sha256()
    for batch, labels in zip(calib.batches, calib.labels, strict=True):
        for name in sorted(batch):
            value = np.ascontiguousarray(batch[name])
            digest.update(f"{name}|{value.dtype.str}|{value.shape}".encode())
            digest.update(value.tobytes())
        if labels is not None:
            digest.update(np.ascontiguousarray(labels).astype(np.int64).tobytes())
    return digest.hexdigest()


def mask_digest(mask: np.ndarray) -> str:
    return hashlib.sha256(np.packbits(np.asarray(mask, bool).reshape(-1)).tobytes()).hexdigest()


@dataclass(frozen=True)
class Choice:
    """One candidate's recorded choice."""

    option: LayoutOption
    mask_sha256: str


@dataclass(frozen=True)
class Plan:
    """A run's choices and the digests of what they depend on (see the module docstring)."""

    input_sha256: str
    calibration_sha256: str | None
    calibration_samples: int
    latency_fingerprint: str | None
    config: Mapping[str, object]
    choices: Mapping[str, Choice]
    output_sha256: str | None = None

    def to_json(self) -> dict:
        return {
            "onnxprune_plan": PLAN_FORMAT,
            "input_sha256": self.input_sha256,
            "calibration": None if self.calibration_sha256 is None else {
                "sha256": self.calibration_sha256, "samples": self.calibration_samples},
            "latency_fingerprint": self.latency_fingerprint,
            "config": dict(self.config),
            "choices": {name: {**c.option.to_json(), "mask_sha256": c.mask_sha256}
                        for name, c in self.choices.items()},
            "output_sha256": self.output_sha256,
        }

    def prune_config(self, calib_dir: Path | None, calib_reader: str | None) -> PruneConfig:
        """The settings the planned run had, with this run's calibration source."""
        values = dict(self.config)
        values["shapes"] = {k: tuple(v) for k, v in values["shapes"].items()}
        values["layouts"] = tuple(values["layouts"])
        values["levels"] = tuple(values["levels"])
        values["nm"] = tuple(values["nm"]) if values["nm"] is not None else None
        values["overrides"] = tuple(  # plans of format 1 written before rules were recorded
            NodeOverride(**{**rule, "layouts": tuple(rule["layouts"]),
                            "structure_kinds": tuple(rule["structure_kinds"])})
            for rule in values.get("overrides", ()))
        return PruneConfig(**values, calib_dir=calib_dir, calib_reader=calib_reader)


def make_plan(input_path: Path, config: PruneConfig, calib: CalibSet | None,
              fingerprint: str | None, candidates: Sequence[Candidate],
              chosen: Mapping[str, PrunedWeight], output_path: Path | None = None) -> Plan:
    config_json = {}
    for name in _CONFIG_FIELDS:
        value = getattr(config, name)
        if name == "shapes":
            value = {k: list(v) for k, v in value.items()}
        elif name == "overrides":
            value = [dataclasses.asdict(rule) for rule in value]
        elif name == "fix":  # text from the command line, or any array-like from the API
            value = {k: v if isinstance(v, str) else np.asarray(v).tolist()
                     for k, v in value.items()}
        elif isinstance(value, tuple):
            value = list(value)
        config_json[name] = value
    choices = {c.name: Choice(chosen[c.name].option, mask_digest(chosen[c.name].mask))
               for c in candidates}
    return Plan(model_digest(input_path), calibration_digest(calib),
                calib.samples if calib is not None else 0, fingerprint, config_json, choices,
                model_digest(output_path) if output_path is not None else None)


def write_plan(plan: Plan, path: str | os.PathLike[str]) -> None:
    """Write the plan as JSON, atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(plan.to_json(), indent=1, sort_keys=True) + "\n"
    write_bytes_atomic(text.encode(), target)


def read_plan(path: str | os.PathLike[str]) -> Plan:
    """Read a plan written by :func:`write_plan`; anything else is a :class:`UserError`."""
    source = Path(path)
    if not source.is_file():
        raise UserError(f"no such plan file: {source}")
    try:
        data = json.loads(source.read_text())
        if data.get("onnxprune_plan") != PLAN_FORMAT:
            raise UserError(f"{source} is not an onnxprune plan (format {PLAN_FORMAT})")
        calibration = data["calibration"]
        choices = {name: Choice(LayoutOption.from_json(c), c["mask_sha256"])
                   for name, c in data["choices"].items()}
        return Plan(data["input_sha256"], calibration and calibration["sha256"],
                    calibration["samples"] if calibration else 0, data["latency_fingerprint"],
                    data["config"], choices, data.get("output_sha256"))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{source} is not a valid onnxprune plan ({exc!r})") from None
