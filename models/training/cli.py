"""``rxstream train`` and ``rxstream eval``: argument parsers and handlers (hooked into stream/cli.py)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

# Kept literal (not imported from config, which imports torch): building the CLI parser must stay light
# for `rxstream serve`. tests/test_training.py checks it matches config.MODEL_KINDS.
MODEL_KINDS = ("autoencoder", "restorer", "generator")

log = logging.getLogger(__name__)


def add_parsers(sub: Any) -> None:
    t = sub.add_parser("train", help="train a neural model (autoencoder, restorer, generator)")
    t.add_argument("model", choices=MODEL_KINDS)
    t.add_argument("--config", default=None, help="JSON/TOML file over models/configs/<model>.json")
    t.add_argument("--out", default=None, help="run dir; default ~/.cache/rxstream/runs/<model>")
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    t.add_argument("--device", choices=("cpu", "cuda"), default=None)
    t.add_argument("--amp", choices=("none", "bf16", "fp16"), default=None, help="CUDA autocast dtype")
    t.add_argument("--max-steps", type=int, default=None)
    t.add_argument("--max-minutes", type=float, default=None)
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--init", default=None, help="shipped weights (.pt from rxstream publish) to fine-tune from")

    pb = sub.add_parser("publish", help="write a checkpoint's (EMA) weights in the shipped format + provenance card")
    pb.add_argument("checkpoint", help="checkpoint .pt written by rxstream train")
    pb.add_argument("--out", default="models/weights", help="weights directory (default models/weights)")
    pb.add_argument("--no-ema", action="store_true", help="publish the raw instead of the EMA weights")

    e = sub.add_parser("eval", help="evaluate a checkpoint on the held-out split (JSON report + contact sheet)")
    e.add_argument("model", choices=MODEL_KINDS)
    e.add_argument("--weights", required=True, help="checkpoint .pt written by rxstream train")
    e.add_argument("--out", required=True, help="directory for report.json and contact_sheet.png")
    e.add_argument("--n", type=int, default=64, help="held-out samples")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--fidelity", type=float, default=0.5, help="restorer fidelity weight in [0, 1]")
    e.add_argument("--no-ema", action="store_true", help="evaluate the raw instead of the EMA weights")
    e.add_argument("--no-identity", action="store_true", help="skip the dlib identity distance")
    e.add_argument("--data-root", default=None, help="shared data folder (default ../shared/data)")


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    flags = {"device": args.device, "amp": args.amp, "max_steps": args.max_steps, "max_minutes": args.max_minutes,
             "seed": args.seed, "batch_size": args.batch_size, "threads": args.threads}  # fmt: skip
    run: dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
    if args.no_progress:
        run["progress"] = False
    return {"run": run} if run else {}


def run(args: argparse.Namespace) -> int:
    from models.training.config import ConfigError
    from models.training.data import DataError

    try:
        if args.command == "train":
            from models.training.config import load_config
            from models.training.trainer import run_training

            cfg = load_config(args.model, args.config, train_overrides(args))
            out = args.out or str(Path.home() / ".cache" / "rxstream" / "runs" / args.model)
            result = run_training(cfg, out, resume=args.resume, init=args.init)
            print(json.dumps({"step": result.step, "out": out, "checkpoint": str(result.checkpoint),
                              "stopped_by": result.stopped_by}))  # fmt: skip
            return 0
        if args.command == "publish":
            from models.training.publish import publish

            print(publish(args.checkpoint, args.out, use_ema=not args.no_ema))
            return 0
        from models.training.evaluate import evaluate

        overrides = {"data": {"data_root": args.data_root}} if args.data_root else None
        report = evaluate(args.model, args.weights, args.out, n_samples=args.n, batch_size=args.batch_size,
                          overrides=overrides, use_ema=not args.no_ema, fidelity=args.fidelity,
                          identity=not args.no_identity)  # fmt: skip
        print(json.dumps(report, indent=2))
        return 0
    except (ConfigError, DataError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"rxstream {args.command}: {e}", file=sys.stderr)
        return 2
