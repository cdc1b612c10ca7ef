"""Training infrastructure: configs, the held-out split, data order, per-model steps, bit-exact resume,
the pair teachers, evaluation outputs and the CLI. Tiny 32px networks; CPU only."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from models.losses import psnr  # noqa: E402
from models.nets import PrescriptionCondition  # noqa: E402
from models.nets.generator import base_grid, warp  # noqa: E402
from models.training import cli as training_cli  # noqa: E402
from models.training.config import (  # noqa: E402
    MODEL_KINDS,
    ConfigError,
    TrainConfig,
    from_dict,
    load_config,
    to_dict,
)
from models.training.data import (  # noqa: E402
    CropItem,
    FaceCrops,
    StepBatchSampler,
    colour_jitter,
    evenly_spaced,
    holdout_by_hash,
    split_items,
    to_tensor,
)
from models.training.evaluate import contact_sheet, evaluate, masked_psnr  # noqa: E402
from models.training.pairs import VERTEX_M, AnalyticLensPairSource, PairDataset, analytic_pair  # noqa: E402
from models.training.restorer import degraded_pair  # noqa: E402
from models.training.trainer import Trainer, build_task, latest_checkpoint, seed_everything  # noqa: E402

SIZE = 32
TINY: dict[str, Any] = {
    "data": {"size": SIZE, "flip": False, "jitter": 0.0},
    "run": {"batch_size": 4, "max_steps": 4, "progress": False, "log_every": 1, "checkpoint_every": 0},
    "optim": {"lr_g": 2e-3, "lr_d": 2e-3, "ema_decay": 0.99},
    "disc": {"channels": {"32": 8, "16": 16, "8": 16}, "bottleneck": 8},
    "autoencoder": {"size": SIZE, "w_dim": 16, "channels": {"4": 16, "8": 16, "16": 8, "32": 8}},
    "autoencoder_loss": {"adv_start": 1, "r1_every": 2},
    "restorer": {"size": SIZE, "bottleneck": 4, "channels": {"4": 16, "8": 16, "16": 8, "32": 8},
                 "quant_max_res": 8, "n_codes": 32, "lgf_grid": 2},
    "restorer_loss": {"adv_start": 1, "r1_every": 2, "codec_fraction": 0.0},
    "generator": {"size": SIZE, "bottleneck": 8, "channels": {"8": 16, "16": 16, "32": 8}, "emb_dim": 16,
                  "n_res": 1, "disc_channels": {"32": 8, "16": 16, "8": 16}, "disc_bottleneck": 8},
    "generator_loss": {"adv_start": 1, "r1_every": 2},
}  # fmt: skip


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(2)


def tiny_config(model: str, **over: Any) -> TrainConfig:
    from models.training.config import merge

    return load_config(model, None, merge(TINY, over))


def face_like(n: int, size: int = SIZE, seed: int = 0) -> list[np.ndarray]:
    """Smooth random images (low-frequency colour fields): learnable in a few steps, unlike white noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        import cv2

        out.append(cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC))
    return out


class FixedPairs(torch.utils.data.Dataset):
    """A fixed set of analytic pairs (the batch does not change between steps)."""

    def __init__(self, n: int) -> None:
        imgs = face_like(n, seed=3)
        conds = [PrescriptionCondition(mode="add", sphere_d=-8.0 + 2 * i, strength=1.0) for i in range(n)]
        self.pairs = [analytic_pair(im, c).tensors() for im, c in zip(imgs, conds, strict=True)]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        return self.pairs[key[0]]


def dataset_for(model: str, fixed: bool) -> torch.utils.data.Dataset:
    imgs = face_like(4)
    if model == "autoencoder":
        return FaceCrops([], SIZE, images=imgs, flip=False)
    if model == "restorer":
        if fixed:  # one degradation per image whatever the step: a fixed batch
            return FaceCrops([], SIZE, lambda im, rng: degraded_pair(im, np.random.default_rng(7), 0.0),
                             images=imgs, flip=False)  # fmt: skip
        return FaceCrops([], SIZE, lambda im, rng: degraded_pair(im, rng, 0.0), images=imgs, flip=False)
    if fixed:
        return FixedPairs(4)
    return PairDataset(AnalyticLensPairSource(lambda r: imgs[int(r.integers(0, 4))], SIZE), 16)


def make_trainer(model: str, out: Path, fixed: bool = False, **over: Any) -> Trainer:
    cfg = tiny_config(model, **over)
    seed_everything(cfg.run.seed)
    return Trainer(build_task(cfg, torch.device("cpu")), out, dataset_for(model, fixed))


def state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- config ------------------------------------------------------------------------------------
def test_default_configs_load_and_roundtrip() -> None:
    assert training_cli.MODEL_KINDS == MODEL_KINDS
    for model in MODEL_KINDS:
        cfg = load_config(model)
        assert cfg.model == model and cfg.net_config().size == cfg.data.size
        assert from_dict(TrainConfig, to_dict(cfg)) == cfg  # int-keyed channel tables survive JSON


def test_config_files_overrides_and_errors(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('[run]\nbatch_size = 3\n[autoencoder_loss]\nadv_start = 7\n')
    cfg = load_config("autoencoder", toml, {"run": {"seed": 5}})
    assert (cfg.run.batch_size, cfg.run.seed, cfg.autoencoder_loss.adv_start) == (3, 5, 7)
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"run": {"batch_sise": 3}}))
    with pytest.raises(ConfigError, match="batch_sise"):
        load_config("autoencoder", js)
    with pytest.raises(ConfigError, match=r"data\.size"):
        load_config("restorer", None, {"data": {"size": 64}})
    with pytest.raises(ConfigError, match="integer"):
        load_config("restorer", None, {"run": {"max_steps": "many"}})
    with pytest.raises(ConfigError, match="not found"):
        load_config("generator", tmp_path / "missing.json")


# -- split and data order ---------------------------------------------------------------------------
def test_holdout_split_is_deterministic_disjoint_and_by_clip() -> None:
    from models.training.config import DataConfig

    items = [CropItem(f"celeba/{i:06d}", f"{i:06d}", Path(f"{i:06d}.jpg"), "celeba") for i in range(1, 4001)]
    items += [CropItem(f"{c}/{f:05d}", c, Path("x.png"), "aligned") for c in ("d0", "d11", "d20") for f in range(5)]
    cfg = DataConfig(holdout_clips=("d11", "d20"))
    train, held = split_items(items, cfg)
    train2, held2 = split_items(list(reversed(items)), cfg)
    assert {i.key for i in train} == {i.key for i in train2} and {i.key for i in held} == {i.key for i in held2}
    assert not {i.key for i in train} & {i.key for i in held}
    assert len(train) + len(held) == len(items)
    frac = sum(i.kind == "celeba" for i in held) / 4000
    assert 0.085 < frac < 0.115  # 10% by hash (binomial sd ~0.5%)
    assert {i.group for i in held if i.kind == "aligned"} == {"d11", "d20"}
    assert holdout_by_hash("000001", 0.1) == holdout_by_hash("000001", 0.1)


def test_step_sampler_is_a_pure_function_of_seed_and_step() -> None:
    full = StepBatchSampler(10, 4, seed=3)
    it = iter(full)
    first = [next(it) for _ in range(6)]
    resumed = iter(StepBatchSampler(10, 4, seed=3, start_step=4))
    assert [next(resumed), next(resumed)] == first[4:6]
    # each epoch visits every index once (steps 0-4 cover two epochs of 10 with batch 4)
    idx = [i for b in first[:5] for i, _ in b]
    assert sorted(idx[:10]) == list(range(10)) and sorted(idx[10:20]) == list(range(10))
    assert len({s for b in first for _, s in b}) == 24  # distinct per-sample seeds
    assert first != [b for b, _ in zip(iter(StepBatchSampler(10, 4, seed=4)), range(6), strict=False)]


def test_augmentation_is_seeded() -> None:
    ds = FaceCrops([], SIZE, images=face_like(2), flip=True, jitter=0.1)
    a, b, c = ds[(0, 11)]["image"], ds[(0, 11)]["image"], ds[(0, 12)]["image"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    img = face_like(1)[0]
    assert np.array_equal(colour_jitter(img, 0.0, np.random.default_rng(0)), img)
    assert evenly_spaced(10, 3) == [0, 4, 9] and evenly_spaced(3, 5) == [0, 1, 2]


# -- per-model steps ----------------------------------------------------------------------------
@pytest.mark.parametrize("model", MODEL_KINDS)
def test_few_steps_reduce_the_loss_and_update_every_part(model: str, tmp_path: Path) -> None:
    steps = 12 if model != "generator" else 8
    tr = make_trainer(model, tmp_path, fixed=True, run={"max_steps": steps})
    before = {k: {n: p.detach().clone() for n, p in m.named_parameters()} for k, m in tr.task.nets.items()}
    codebook = None
    if model == "restorer":
        codebook = next(iter(tr.task.nets["net"].quantizers.values())).codebook.clone()
    res = tr.train()
    losses = [h["l1"] for h in res.history]
    assert all(math.isfinite(h["loss"]) and math.isfinite(h["loss_d"]) for h in res.history[1:])
    assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3]), losses
    for k, m in tr.task.nets.items():  # generator/restorer/autoencoder and the discriminator all moved
        moved = [not torch.equal(p, before[k][n]) for n, p in m.named_parameters() if p.requires_grad]
        assert sum(moved) > 0.5 * len(moved), k
    if codebook is not None:  # EMA codebook learning
        assert not torch.equal(codebook, next(iter(tr.task.nets["net"].quantizers.values())).codebook)
    assert tr.ema is not None and not state_equal(tr.ema.state_dict(), tr.task.nets["net"].state_dict())
    lines = (tmp_path / "scalars.jsonl").read_text().splitlines()
    assert len(lines) == steps and json.loads(lines[-1])["step"] == steps
    assert latest_checkpoint(tmp_path) is not None


@pytest.mark.parametrize("model", MODEL_KINDS)
def test_resume_is_bit_identical(model: str, tmp_path: Path) -> None:
    """4 steps straight vs 2 + checkpoint + resume 2: same weights, EMA, optimiser and losses. The restorer
    run also covers fresh per-step degradations, DiffAugment and fidelity draws (task RNG), and codebooks."""
    straight = make_trainer(model, tmp_path / "a")
    ref = straight.train()
    first = make_trainer(model, tmp_path / "b", run={"max_steps": 2})
    first.train()
    seed_everything(123)  # resume must not depend on the process's RNG state
    resumed = make_trainer(model, tmp_path / "b", run={"seed": 0})
    torch.manual_seed(999)
    res = resumed.train(resume=True)
    assert res.step == 4 and len(res.history) == 2
    for a, b in zip(ref.history[2:], res.history, strict=True):
        assert {k: v for k, v in a.items() if k != "step_s"} == {k: v for k, v in b.items() if k != "step_s"}
    for k in straight.task.nets:
        assert state_equal(straight.task.nets[k].state_dict(), resumed.task.nets[k].state_dict()), k
        sa, sb = straight.task.opts[k].state_dict()["state"], resumed.task.opts[k].state_dict()["state"]
        assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    assert straight.ema is not None and resumed.ema is not None
    assert state_equal(straight.ema.state_dict(), resumed.ema.state_dict())


def test_max_minutes_stops_and_checkpoints(tmp_path: Path) -> None:
    tr = make_trainer("autoencoder", tmp_path, run={"max_steps": 1000, "max_minutes": 1e-6})
    res = tr.train()
    assert res.stopped_by == "max_minutes" and res.step == 1
    assert latest_checkpoint(tmp_path) == res.checkpoint


# -- pairs ----------------------------------------------------------------------------------------
def test_analytic_pair_matches_the_paraxial_closed_form() -> None:
    img = face_like(1, 128)[0]
    cond = PrescriptionCondition(mode="add", sphere_d=-6.0, strength=0.5, lens="right")
    p = analytic_pair(img, cond)
    from models.align import DEFAULT_TEMPLATE

    cx, cy = DEFAULT_TEMPLATE.points(128)[0]
    y, x = int(cy) + 5, int(cx) + 3
    expected = 0.5 * (-VERTEX_M * -6.0) * np.array([x - cx, y - cy]) * 2.0 / 128  # d = s (I - dF - I)(p - c)
    np.testing.assert_allclose(p.field[y, x], expected, rtol=1e-5)
    assert np.all(p.field[p.mask == 0] == 0) and np.array_equal(p.y[p.mask == 0], img[p.mask == 0])
    assert p.mask[:, 64:].sum() == 0  # right lens only: the subject's right eye is on image left
    # The field reproduces the target through the generator's own warp (same conventions).
    t = warp(to_tensor(img)[None], torch.from_numpy(p.field.transpose(2, 0, 1))[None], base_grid(128, 128))
    inside = torch.from_numpy(p.mask > 0)
    err = (t[0] - to_tensor(p.y)).abs()[:, inside]
    assert float(err.max()) < 2.5 / 127.5
    zero = analytic_pair(img, PrescriptionCondition(sphere_d=-6.0, strength=0.0))
    assert np.array_equal(zero.y, img) and not zero.field.any()


def test_analytic_remove_pairs_invert_add() -> None:
    img = face_like(1, 128)[0]
    src = AnalyticLensPairSource(lambda r: img, 128)
    for seed in range(40):
        p = src.sample(np.random.default_rng(seed))
        if p.cond.mode == "remove" and p.cond.sphere_d < -2 and p.cond.tint_rgba[3] == 0:
            break
    else:
        pytest.fail("no remove pair drawn")
    assert np.array_equal(p.y, img) and not np.array_equal(p.x, img)
    # A minus lens minifies: removing it reveals the original exactly up to resampling.
    t = warp(to_tensor(p.x)[None], torch.from_numpy(p.field.transpose(2, 0, 1))[None], base_grid(128, 128))
    m = torch.from_numpy(p.mask > 0)
    assert float(psnr(t[:, :, m][..., None], to_tensor(img)[None][:, :, m][..., None])) > 35.0


# -- evaluation ------------------------------------------------------------------------------------
def test_masked_psnr_and_contact_sheet() -> None:
    x = torch.zeros(1, 3, 4, 4)
    y = x.clone()
    y[..., :2, :] = 0.2  # error 0.2 on the top half only
    top = torch.zeros(1, 1, 4, 4)
    top[..., :2, :] = 1
    assert float(masked_psnr(x, y, top)) == pytest.approx(10 * math.log10(4 / 0.04), rel=1e-5)
    assert math.isnan(float(masked_psnr(x, y, torch.zeros(1, 1, 4, 4))))
    sheet = contact_sheet([[np.zeros((32, 32, 3), np.uint8)] * 5] * 3)
    assert sheet.shape == (3 * 130 + 2, 5 * 130 + 2, 3)


@pytest.mark.parametrize("model", MODEL_KINDS)
def test_eval_writes_report_and_contact_sheet(model: str, tmp_path: Path) -> None:
    import cv2

    tr = make_trainer(model, tmp_path / "run", run={"max_steps": 2})
    ckpt = tr.train().checkpoint
    report = evaluate(model, ckpt, tmp_path / "eval", n_samples=6, batch_size=3, dataset=dataset_for(model, False),
                      identity=model == "restorer")  # fmt: skip
    saved = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert saved["n"] == 6 and saved["step"] == 2 and saved["model"] == model
    key = {"autoencoder": "ms_ssim", "restorer": "psnr_gain_db", "generator": "psnr_lens"}[model]
    assert math.isfinite(saved[key]) and saved == json.loads(json.dumps(report))
    sheet = cv2.imread(str(tmp_path / "eval" / "contact_sheet.png"))
    assert sheet.shape == (3 * 130 + 2, 6 * 130 + 2, 3)  # rows input/output/target, 6 samples
    if model == "restorer":
        ident = saved["identity"]
        assert "skipped" in ident or 0.0 <= ident["output_vs_target"] < 2.0


# -- real data (skipped without ../shared/data) ------------------------------------------------------
def test_cli_train_resume_and_eval_on_celeba(shared_data: Path, tmp_path: Path) -> None:
    from stream.cli import main

    cfg = dict(TINY)
    cfg["data"] = {**TINY["data"], "clips": False, "max_items": 16, "data_root": str(shared_data)}
    cfg["run"] = {**TINY["run"], "checkpoint_every": 1}
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(cfg))
    out = tmp_path / "run"
    args = ["train", "autoencoder", "--config", str(path), "--out", str(out), "--no-progress", "--threads", "2"]
    assert main([*args, "--max-steps", "1"]) == 0
    assert main([*args, "--max-steps", "2", "--resume"]) == 0
    assert latest_checkpoint(out) is not None and latest_checkpoint(out).name == "step_000000002.pt"
    assert main(["eval", "autoencoder", "--weights", str(latest_checkpoint(out)), "--out", str(tmp_path / "ev"),
                 "--n", "4", "--no-identity"]) == 0  # fmt: skip
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["n"] == 4 and math.isfinite(report["psnr"])
    assert main(["eval", "autoencoder", "--weights", str(tmp_path / "nope.pt"), "--out", str(tmp_path)]) == 2


def test_optics_pairs_follow_the_ray_traced_warp(clip_frames: Any, landmarker_model: Path, tmp_path: Path) -> None:
    """The optics teacher on a tracked real frame: the crop-space field, fed to the generator's warp,
    reproduces the target crop inside the lenses (checks the frame -> crop field transform)."""
    from models.training.data import FrameRecord, write_rgb
    from models.training.pairs import OpticsPairSource
    from stream.tracking import FaceTracker

    clip = clip_frames("liveportrait_d12", n=3)
    with FaceTracker() as tracker:
        faces = [tracker.track(np.ascontiguousarray(f), t)[0] for f, t in zip(clip.frames, clip.times_s, strict=True)]
    write_rgb(tmp_path / "f.png", np.ascontiguousarray(clip.frames[-1]))
    rec = FrameRecord("d12/2", "d12", tmp_path / "c.png", tmp_path / "f.png", 2)
    src = OpticsPairSource([rec], {"d12": faces}, 128, 128)
    seen = set()
    for seed in range(16):
        p = src.sample(np.random.default_rng(seed))
        assert p.field_valid and p.y.shape == (128, 128, 3)
        if abs(p.cond.sphere_d) < 3:
            continue
        seen.add(p.cond.mode)
        assert p.mask.sum() > 50 and np.abs(p.field).max() > 0.2 * 2 / 128  # > 0.2 px somewhere
        assert not p.field[p.mask == 0].any() or np.abs(p.field[p.mask == 0]).max() < np.abs(p.field).max()
        t = warp(to_tensor(p.x)[None], torch.from_numpy(p.field.transpose(2, 0, 1))[None], base_grid(128, 128))
        inner = torch.from_numpy(p.mask > 0.99)
        got = float(psnr(t[:, :, inner][..., None], to_tensor(p.y)[None][:, :, inner][..., None]))
        ident = float(psnr(to_tensor(p.x)[None][:, :, inner][..., None], to_tensor(p.y)[None][:, :, inner][..., None]))
        assert got > 30.0 and got > ident, (p.cond.mode, got, ident)
    assert seen == {"add", "remove"}  # remove pairs: the inverted field undoes the lens


def test_invert_field_matches_the_closed_form_inverse_magnification() -> None:
    """A lens magnifying by M about c: f(p) = (1/M - 1)(p - c) (out(p) = x(c + (p - c)/M)); its inverse
    warp is g(p) = (M - 1)(p - c)."""
    from models.training.pairs import invert_field

    s, m = 64, 1.12
    ys, xs = np.mgrid[0:s, 0:s].astype(np.float64)
    c = np.array([30.3, 33.1])
    f = np.stack([(1 / m - 1) * (xs - c[0]), (1 / m - 1) * (ys - c[1])], -1) * (2.0 / s)
    g = invert_field(f.astype(np.float32))
    want = np.stack([(m - 1) * (xs - c[0]), (m - 1) * (ys - c[1])], -1) * (2.0 / s)
    inner = (np.hypot(xs - c[0], ys - c[1]) < 20)  # away from the border clamp
    assert np.abs(g - want)[inner].max() * s / 2 < 0.02  # pixels


@pytest.mark.parametrize("model", MODEL_KINDS)
def test_publish_writes_loadable_ema_weights_with_a_card(model: str, tmp_path: Path) -> None:
    """``rxstream publish``: the shipped file reproduces the checkpoint's EMA network exactly."""
    from export.models import example_inputs, load_model, model_spec
    from models.training.evaluate import load_model as load_from_checkpoint
    from models.training.publish import EXPORT_NAMES
    from models.training.trainer import load_checkpoint
    from stream.cli import main

    ckpt = make_trainer(model, tmp_path / "run", run={"max_steps": 2}).train().checkpoint
    assert main(["publish", str(ckpt), "--out", str(tmp_path / "w")]) == 0
    name = EXPORT_NAMES[model]
    shipped = load_model(name, SIZE, tmp_path / "w" / f"{name}.pt")
    c = load_checkpoint(ckpt)
    ref = load_from_checkpoint(c, load_config(model, None, c["config"]), use_ema=True)
    feed = [torch.from_numpy(v) for v in example_inputs(model_spec(name), 2, SIZE, seed=3).values()]
    with torch.no_grad():
        assert torch.equal(shipped.module(*feed), ref(*feed))
    card = json.loads((tmp_path / "w" / f"{name}.card.json").read_text())
    assert card["step"] == 2 and card["weights"] == "ema" and "non-commercial" in card["licence"]
    assert shipped.source.startswith(f"sha256:{card['weights_sha256']}")


def test_init_from_shipped_weights_fine_tunes_and_records_provenance(tmp_path: Path) -> None:
    """``rxstream train --init W``: the run starts from W (net and EMA), the card names W and its hash."""
    from stream.cli import main

    ckpt = make_trainer("restorer", tmp_path / "a", run={"max_steps": 2}).train().checkpoint
    assert main(["publish", str(ckpt), "--out", str(tmp_path / "w")]) == 0
    shipped = tmp_path / "w" / "restorer.pt"
    state = torch.load(shipped, weights_only=True)
    tr = make_trainer("restorer", tmp_path / "b", run={"max_steps": 1})
    tr.init_from(shipped)
    assert state_equal(tr.task.nets["net"].state_dict(), state) and tr.ema is not None
    assert state_equal(tr.ema.state_dict(), state)
    res = tr.train()
    assert res.step == 1 and not state_equal(tr.task.nets["net"].state_dict(), state)  # it trained from there
    assert main(["publish", str(res.checkpoint), "--out", str(tmp_path / "w2")]) == 0
    card = json.loads((tmp_path / "w2" / "restorer.card.json").read_text())
    from accel.cache import sha256_file

    assert card["fine_tuned_from"] == {"path": str(shipped), "sha256": sha256_file(shipped)}
    with pytest.raises(RuntimeError):  # a state dict of another architecture is refused, not half-loaded
        make_trainer("autoencoder", tmp_path / "c").init_from(shipped)


def test_fidelity_top_fraction_trains_that_share_at_full_fidelity() -> None:
    cfg = tiny_config("restorer", restorer_loss={"fidelity_top_fraction": 0.5})
    task = build_task(cfg, torch.device("cpu"))
    fid = task.fidelity(4000)
    top = float((fid == 1.0).float().mean())
    assert 0.45 < top < 0.55 and float(fid.min()) >= 0.0  # the rest stays uniform over [0, 1]
    assert 0.45 < float(fid[fid < 1.0].mean()) < 0.55
