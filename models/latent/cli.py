"""``rxstream latent``: latent try-on of a photo, retrieval by facial feature, clustering, frame suggestions.

    rxstream latent tryon IMG --frame NAME [--reference IMG] --out OUT.png   (+ OUT.json diagnostics)
    rxstream latent retrieve IMG --feature eyes --k 5 [--gallery celeba|frames]
    rxstream latent cluster --feature eyes --k 4
    rxstream latent suggest IMG                                              (frames that suit faces like mine)

Galleries of CelebA faces come from the shared data (``--n`` of them, seeded; ``--attribute Eyeglasses`` to
keep only glasses wearers); their aligned crops are cached under the rxstream cache. Results are JSON on
stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

FEATURE_CHOICES = ("eyes", "glasses", "mouth", "nose", "hair")


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("latent", help="latent try-on, retrieval and clustering in the style autoencoder's space")
    lsub = p.add_subparsers(dest="latent_command", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--weights", default=None, help="style autoencoder weights (.pt + .json) or a training "
                       "checkpoint (default: models/weights/style_autoencoder.pt)")  # fmt: skip
        q.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")

    t = lsub.add_parser("tryon", help="two-stage latent try-on of a catalogue frame on a photo")
    t.add_argument("image")
    t.add_argument("--frame", required=True, help="catalogue frame name (rxstream filters lists them)")
    t.add_argument("--reference", default=None, help="appearance/style reference photo (default: a CelebA "
                   "glasses photo from the shared data)")  # fmt: skip
    t.add_argument("--out", required=True, help="composited result (.png); diagnostics go to the same name .json")
    t.add_argument("--steps1", type=int, default=None, help="stage-1 steps")
    t.add_argument("--steps2", type=int, default=None, help="stage-2 steps")
    t.add_argument("--colour", choices=("decoded", "residual"), default="decoded")
    common(t)

    def gallery_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--feature", choices=FEATURE_CHOICES, default="eyes")
        q.add_argument("--n", type=int, default=200, help="CelebA gallery size (seeded sample)")
        q.add_argument("--attribute", default=None, help="keep only CelebA faces with this attribute, e.g. Eyeglasses")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--tau", type=float, default=0.1, help="channel soft-assignment temperature")

    r = lsub.add_parser("retrieve", help="nearest gallery items to a photo for one facial feature")
    r.add_argument("image")
    r.add_argument("--k", type=int, default=5)
    r.add_argument("--gallery", choices=("celeba", "frames"), default="celeba",
                   help="CelebA faces, or the catalogue's frames rendered on a face")  # fmt: skip
    r.add_argument("--render-on", default=None, help="gallery frames: the face photo to render the catalogue on "
                   "(default: IMG itself; use a face without glasses when IMG wears some)")  # fmt: skip
    gallery_args(r)
    common(r)

    c = lsub.add_parser("cluster", help="k-means sub-groups of a CelebA gallery for one facial feature")
    c.add_argument("--k", type=int, default=4)
    gallery_args(c)
    common(c)

    s = lsub.add_parser("suggest", help="catalogue frames worn by the glasses wearers whose faces look like yours")
    s.add_argument("image")
    s.add_argument("--k-faces", type=int, default=8)
    s.add_argument("--n", type=int, default=200, help="CelebA glasses wearers in the gallery (seeded sample)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--tau", type=float, default=0.1)
    common(s)


def _celeba_index(net: Any, args: argparse.Namespace, attribute: str | None) -> tuple[Any, Any]:
    from models.latent.retrieval import GalleryIndex, align_celeba, bank_from_set, celeba_files

    files = celeba_files(args.n, attribute, True, args.seed)
    bank = bank_from_set(net, align_celeba(files, net.cfg.size))
    return GalleryIndex.build(bank, args.tau), bank


def _query(net: Any, image: str) -> tuple[Any, Any]:
    """(aligned photo, one-face bank) for a photo path."""
    from models.latent.job import align_photo
    from models.latent.retrieval import encode_faces

    photo = align_photo(image, net.cfg.size)
    return photo, encode_faces(net, [Path(image).name], [photo.crop], [photo.landmarks])


def _tryon(net: Any, args: argparse.Namespace) -> dict[str, Any]:
    import dataclasses

    import cv2
    import numpy as np

    from models.align import paste_back
    from models.latent.job import LatentItem, LatentTryonConfig, align_photo, run_latent_tryon
    from models.latent.photos import read_rgb

    original = read_rgb(args.image)
    photo = align_photo(args.image, net.cfg.size)
    cfg = LatentTryonConfig(weights=args.weights or "", colour=args.colour)
    steps = {k: v for k, v in (("steps_stage1", args.steps1), ("steps_stage2", args.steps2)) if v is not None}
    if steps:
        cfg = dataclasses.replace(cfg, loho=dataclasses.replace(cfg.loho, **steps))
    layer = run_latent_tryon(photo.prepared.image, photo.face, LatentItem(args.frame, args.reference), cfg)
    colour = np.clip(np.rint(layer.rgba[..., :3] * 255.0), 0, 255).astype(np.uint8)
    composite = paste_back(photo.prepared.image, colour, photo.matrix, feather_px=0.0, crop_alpha=layer.rgba[..., 3])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), cv2.cvtColor(photo.prepared.restore(composite, original.shape), cv2.COLOR_RGB2BGR)):
        raise ValueError(f"cannot write {out}")
    report = {"image": args.image, "out": str(out), "size": layer.size, "timings_ms": layer.timings_ms,
              "diagnostics": layer.diagnostics, "config": dataclasses.asdict(cfg)}  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


def run(args: argparse.Namespace) -> int:
    import torch

    from models.latent.model import get_autoencoder

    try:
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        net = get_autoencoder(args.weights)
        cmd = args.latent_command
        if cmd == "tryon":
            result: Any = _tryon(net, args)
        elif cmd == "retrieve":
            photo, query = _query(net, args.image)
            if args.gallery == "celeba":
                index, _ = _celeba_index(net, args, args.attribute)
            else:
                from models.latent.retrieval import GalleryIndex, bank_from_set, catalogue_set

                on = photo if args.render_on is None else _query(net, args.render_on)[0]
                frames = catalogue_set(on.prepared.image, on.face, net.cfg.size)
                index = GalleryIndex.build(bank_from_set(net, frames), args.tau)
            matches = index.nearest(index.vector(query.styles, args.feature)[0], args.feature, args.k)
            result = {"feature": args.feature, "gallery": args.gallery, "size": len(index.keys),
                      "matches": [vars(m) for m in matches]}  # fmt: skip
        elif cmd == "cluster":
            index, _ = _celeba_index(net, args, args.attribute)
            km = index.cluster(args.feature, args.k, args.seed)
            groups = {str(j): [index.keys[i] for i in range(len(index.keys)) if km.labels[i] == j]
                      for j in range(args.k)}  # fmt: skip
            result = {"feature": args.feature, "k": args.k, "inertia": km.inertia, "clusters": groups}
        else:  # suggest
            from models.latent.retrieval import bank_from_set, catalogue_set, suggest_frames

            wearers, _ = _celeba_index(net, args, "Eyeglasses")
            photo, query = _query(net, args.image)
            frames = bank_from_set(net, catalogue_set(photo.prepared.image, photo.face, net.cfg.size))
            result = {"suggestions": [vars(s) for s in suggest_frames(query, wearers, frames, args.k_faces)]}
        print(json.dumps(result, indent=2, default=str))
        return 0
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"rxstream latent {args.latent_command}: {e}", file=sys.stderr)
        return 2
