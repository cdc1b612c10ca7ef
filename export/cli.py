"""``rxstream export [MODEL ...] --out DIR --size 128 --batch 1 --precision fp32|fp16 [--engine]``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from export.models import MODEL_NAMES, model_spec

log = logging.getLogger(__name__)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    e = sub.add_parser("export", help="export networks to ONNX (+ manifest, parity check, optional TensorRT engine)")
    e.add_argument("models", nargs="*", metavar="MODEL", help=f"any of {', '.join(MODEL_NAMES)} (default: all)")
    e.add_argument("--out", required=True, type=Path, help="output folder")
    e.add_argument("--size", type=int, default=128, help="crop size (px)")
    e.add_argument("--batch", type=int, default=1)
    e.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
    e.add_argument("--weights-dir", type=Path, default=None,
                   help="folder with MODEL.pt + MODEL.json per model (default: seeded random init)")  # fmt: skip
    e.add_argument("--seed", type=int, default=0, help="random-init seed (without weights)")
    e.add_argument("--no-simplify", action="store_true", help="skip onnxslim")
    e.add_argument("--real-clip", type=Path, default=None,
                   help="also check parity on aligned face crops from this video")  # fmt: skip
    e.add_argument("--engine", action="store_true", help="also build the TensorRT engine into the engine cache")
    return e


def run(args: argparse.Namespace) -> int:
    from export.export import ExportOptions, ParityError, export_model

    names = list(args.models) or list(MODEL_NAMES)
    unknown = [n for n in names if n not in MODEL_NAMES]
    if unknown:
        print(f"rxstream export: unknown model(s) {unknown}; choose from {list(MODEL_NAMES)}", file=sys.stderr)
        return 2
    try:
        opts = ExportOptions(size=args.size, batch=args.batch, precision=args.precision, seed=args.seed,
                             simplify=not args.no_simplify)  # fmt: skip
    except ValueError as e:
        print(f"rxstream export: {e}", file=sys.stderr)
        return 2
    real = None
    if args.real_clip is not None:
        from export.parity import aligned_crops, crops_to_nchw

        real = crops_to_nchw(aligned_crops(args.real_clip, args.size, n=max(2, args.batch)))
    status = 0
    for name in names:
        weights = None
        if args.weights_dir is not None:
            weights = args.weights_dir / f"{model_spec(name).weights}.pt"
        try:
            res = export_model(name, args.out, opts, weights=weights, real_inputs=real)
        except (ParityError, ValueError, FileNotFoundError) as e:
            print(f"rxstream export: {name}: {e}", file=sys.stderr)
            status = 1
            continue
        print(f"{res.onnx_path}  ({res.manifest.simplified}; {res.manifest.source_weights})")
        if args.engine:
            status = max(status, _build_engine(res.onnx_path, res.manifest))
    return status


def _build_engine(onnx_path: Path, manifest: Any) -> int:
    from accel.backend import BackendError
    from accel.tensorrt_backend import build_engine, engine_path

    try:
        target = engine_path(onnx_path, manifest, manifest.precision)
        if target.is_file():
            print(f"{target}  (cached)")
        else:
            print(build_engine(onnx_path, target, manifest.precision))
    except BackendError as e:
        print(f"rxstream export --engine: {e}", file=sys.stderr)
        return 2
    return 0
