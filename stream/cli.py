"""`rxstream` command line: serve, process, fetch-model, filters, export, train, eval, latent."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any


def parse_extra_params(extra: Sequence[str]) -> dict[str, Any]:
    """Turn leftover ``--key value`` / ``--key=value`` / ``--flag`` into filter parameters."""
    out: dict[str, Any] = {}
    i = 0
    items = list(extra)
    while i < len(items):
        tok = items[i]
        if not tok.startswith("--") or tok == "--":
            raise SystemExit(f"rxstream: unexpected argument {tok!r}")
        key = tok[2:]
        if "=" in key:
            key, val = key.split("=", 1)
        elif i + 1 < len(items) and not (items[i + 1].startswith("--") and not _is_number(items[i + 1])):
            i += 1
            val = items[i]
        else:
            val = "true"
        out[key.replace("-", "_")] = val
        i += 1
    return out


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


NO_OVERLAP_HELP = ("run neural filters after tracking, in turn, instead of starting them on the previous frame's "
                   "faces while a frame is tracked (README: Overlap)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rxstream", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the WebRTC service and its browser page")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--max-sessions", type=int, default=4, help="browser sessions + WHIP publishers")
    s.add_argument("--max-viewers", type=int, default=8, help="WHEP viewers")
    s.add_argument("--max-faces", type=int, default=2)
    s.add_argument("--ice-server", action="append", default=[], help="STUN/TURN URL (none by default)")
    s.add_argument("--whip-token", default=None, help="require this Bearer token on WHIP/WHEP")
    s.add_argument("--no-overlap", action="store_true", help=NO_OVERLAP_HELP)

    f = sub.add_parser("process", help="run the pipeline over a video file")
    f.add_argument("input")
    f.add_argument("output")
    f.add_argument("--filter", default="passthrough", help="filter chain, e.g. landmarks or tryon+landmarks")
    f.add_argument("--max-faces", type=int, default=2)
    f.add_argument("--no-progress", action="store_true")
    f.add_argument("--no-overlap", action="store_true", help=NO_OVERLAP_HELP)

    sub.add_parser("fetch-model", help="download and verify the face landmarker model")
    sub.add_parser("filters", help="list filters and their parameters")

    from export.cli import add_parser as add_export_parser

    add_export_parser(sub)

    from models.training.cli import add_parsers as add_training_parsers

    add_training_parsers(sub)  # train, eval, publish

    from models.latent.cli import add_parsers as add_latent_parsers

    add_latent_parsers(sub)  # latent tryon / retrieve / cluster / suggest
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command != "process" and extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "fetch-model":
        from stream.model_asset import ModelAssetError, fetch_model

        try:
            print(fetch_model())
        except ModelAssetError as e:
            print(f"rxstream: {e}", file=sys.stderr)
            return 2
        return 0
    if args.command == "filters":
        import json

        from stream.filters import describe

        print(json.dumps(describe(), indent=2, default=str))
        return 0
    if args.command == "serve":
        from stream.server import run_server

        return run_server(args)
    if args.command == "process":
        from stream.file_mode import run_process

        return run_process(args, parse_extra_params(extra))
    if args.command == "export":
        from export.cli import run as run_export

        return run_export(args)
    if args.command == "latent":
        from models.latent.cli import run as run_latent_command

        return run_latent_command(args)
    if args.command in ("train", "eval", "publish"):
        from models.training.cli import run as run_training_command

        return run_training_command(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
