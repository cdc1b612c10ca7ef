"""remove(tryon(x, rx), rx) == x inside the lenses, on real frames of the shared clips.

Refraction only (no frame drawing, no tint), the same tracked faces for both passes. Frames of
liveportrait_d12 with the largest |yaw| (about ±16°), plus a frontal frame re-posed to ±35° yaw
(synthetic: geometry turned through the head centre, texture as recorded).
"""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from models.optics.refraction import outline_roi_mask
from stream.filters import create
from stream.filters.base import FrameContext
from tests.optics_helpers import track_frames, yawed_face

SPHERES = (-8.0, -4.0, -1.0, 2.0, 6.0)
RIM_BAND_PX = 4  # excluded inside the rim: the hidden ring of plus lenses is inpainted, not recovered


@pytest.fixture(scope="module")
def posed_frames(clip_frames, landmarker_model) -> list[tuple[str, np.ndarray, FrameContext]]:
    clip = clip_frames("liveportrait_d12", n=90)
    frames = list(clip.frames)
    faces = track_frames(frames, clip.fps or 25.0)
    yaws = np.array([f[0].pose.yaw_deg if f else np.nan for f in faces])
    picks = {"max_yaw": int(np.nanargmax(yaws)), "min_yaw": int(np.nanargmin(yaws)),
             "frontal": int(np.nanargmin(np.abs(yaws)))}
    out = []
    for name, i in picks.items():
        h, w = frames[i].shape[:2]
        ctx = FrameContext(i, i / 25.0, faces[i], w, h)
        out.append((f"{name}({yaws[i]:+.0f}deg)", frames[i], ctx))
    i = picks["frontal"]
    for extra in (-35.0, 35.0):
        h, w = frames[i].shape[:2]
        base = FrameContext(i, i / 25.0, [], w, h)
        face = yawed_face(faces[i][0], base.camera, extra - float(yaws[i]))
        out.append((f"synthetic({extra:+.0f}deg)", frames[i], FrameContext(i, i / 25.0, [face], w, h)))
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def inner_lens_mask(lenses, width: int, height: int) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * RIM_BAND_PX + 1, 2 * RIM_BAND_PX + 1))
    for lens in lenses:
        roi = outline_roi_mask(lens.outline_px, width, height)
        if roi is None:
            continue
        x0, y0, m, _ = roi
        m = cv2.erode(m.astype(np.uint8), k) > 0
        mask[y0:y0 + m.shape[0], x0:x0 + m.shape[1]] |= m
    return mask


@pytest.mark.parametrize("sphere", SPHERES)
def test_remove_undoes_tryon(posed_frames, sphere: float) -> None:
    rx = f"{sphere:+.2f}"
    # Same prescription (PD included) for both passes, so remove places the lenses as tryon did.
    tryon = create("tryon", {"rx": rx, "pd": 62, "draw_frame": False})
    remove = create("remove", {"rx": rx, "pd": 62, "fit_frames": 0})
    for name, frame, ctx in posed_frames:
        worn = tryon.apply(frame, ctx)
        back = remove.apply(worn, ctx)
        lenses = [lens for fo in tryon.optics(ctx) for lens in fo.lenses]
        inner = inner_lens_mask(lenses, ctx.width, ctx.height)
        assert inner.sum() > 1000, name
        changed = psnr(worn[inner], frame[inner])
        restored = psnr(back[inner], frame[inner])
        print(f"roundtrip {name} sphere {sphere:+.2f}: PSNR restored {restored:.1f} dB, tryon alone {changed:.1f} dB")
        assert restored >= 38.0, f"{name} sphere {sphere}: PSNR {restored:.1f} dB (tryon alone {changed:.1f} dB)"
        assert restored > changed + 1.0, f"{name} sphere {sphere}: remove did not bring the lens area back"
        outside = ~inner_lens_mask(lenses, ctx.width, ctx.height) & ~cv2.dilate(
            inner.astype(np.uint8), np.ones((2 * RIM_BAND_PX + 9,) * 2, np.uint8)).astype(bool)
        assert np.array_equal(back[outside], frame[outside])  # nothing outside the lenses is touched


def test_tryon_identity_cases_and_bad_params(posed_frames) -> None:
    from stream.filters import FilterError

    _, frame, ctx = posed_frames[0]
    off = create("tryon", {"rx": "-6", "strength": 0.0, "draw_frame": False})
    assert np.array_equal(off.apply(frame, ctx), frame)  # strength 0: bit-exact
    plano = create("tryon", {"rx": "plano", "draw_frame": False})
    assert np.abs(plano.apply(frame, ctx).astype(int) - frame).max() <= 1  # zero prescription
    no_faces = FrameContext(0, 0.0, [], ctx.width, ctx.height)
    assert create("tryon").apply(frame, no_faces) is frame
    f = create("tryon", {"rx": "-4.25 -1.00 x 180"})
    for bad, needle in [({"rx": "-25"}, "sphere"), ({"rx": "-2 -1"}, "cannot read"), ({"od": "-2 -1 x 200"}, "axis"),
                        ({"frame": "monocle"}, "monocle"), ({"tint": "#zz"}, "tint"), ({"pd": 30}, "pd")]:
        with pytest.raises(FilterError, match=needle):
            f.configure(bad)
        assert f.params.rx == "-4.25 -1.00 x 180"  # all-or-nothing: the old prescription stays
    with pytest.raises(FilterError, match="prescription"):
        create("remove", {"rx": "+2 -11 x 90"})


def test_tryon_prism_and_single_lens(posed_frames) -> None:
    _, frame, ctx = posed_frames[0]
    both = create("tryon", {"rx": "-4", "draw_frame": False}).apply(frame, ctx)
    right = create("tryon", {"rx": "-4", "lens": "right", "draw_frame": False}).apply(frame, ctx)
    lenses = create("tryon").optics(ctx)[0].lenses
    x_mid = float(np.mean([lens.optical_center_px[0] for lens in lenses]))
    # The subject's right lens is on image left: only that half changes.
    assert not np.array_equal(right[:, : int(x_mid)], frame[:, : int(x_mid)])
    assert np.array_equal(right[:, int(x_mid):], frame[:, int(x_mid):])
    assert np.array_equal(both[:, : int(x_mid)], right[:, : int(x_mid)])
    prism = create("tryon", {"rx": "plano 4Δ BU", "draw_frame": False}).apply(frame, ctx)
    assert not np.array_equal(prism, frame)


PD_MM = 63.0


def test_remove_auto_estimates_then_corrects(clip_frames, landmarker_model) -> None:
    clip = clip_frames("liveportrait_d0", n=10)
    frames = list(clip.frames)
    faces = track_frames(frames, 25.0)
    h, w = frames[0].shape[:2]
    # Worn glasses keep one size. With pd=0 tryon rescales them to the iris-measured PD once its median
    # settles (the 10th frame) while remove (no frame fit here) keeps the tracker's scale: a rim ~1 px off
    # on that frame, which sank the estimate whenever the background analysis drew it twice.
    tryon = create("tryon", {"rx": "-6.00", "draw_frame": False, "pd": PD_MM})
    worn = [tryon.apply(f, FrameContext(i, i / 25.0, faces[i], w, h)) for i, f in enumerate(frames)]
    seen = track_frames(worn, 25.0)
    remove = create("remove", {"rx": "auto", "auto_frames": 4, "rimless": True, "fit_frames": 0,
                               "auto_background": False, "pd": PD_MM})
    outs = [remove.apply(img, FrameContext(i, i / 25.0, seen[i], w, h)) for i, img in enumerate(worn)]
    assert remove.estimate is not None and abs(remove.estimate.sphere + 6.0) <= 0.5
    assert all(o is img for o, img in zip(outs[:3], worn[:3], strict=True))  # untouched while estimating
    assert not np.array_equal(outs[-1], worn[-1])
    # File mode (`rxstream process` calls prepare): no real-time budget, so even with the default
    # auto_background the analysis runs on the frame path and the output does not depend on timing.
    filed = create("remove", {"rx": "auto", "auto_frames": 4, "rimless": True, "fit_frames": 0, "pd": PD_MM})
    filed.prepare()
    filed_outs = [filed.apply(img, FrameContext(i, i / 25.0, seen[i], w, h)) for i, img in enumerate(worn)]
    filed.close()
    assert filed._pool is None and filed.estimate is not None and filed.estimate.frames == remove.estimate.frames
    assert all(np.array_equal(a, b) for a, b in zip(filed_outs, outs, strict=True))
    # The default background estimation gets there too, without ever holding a frame back.
    bg = create("remove", {"rx": "auto", "auto_frames": 4, "rimless": True, "fit_frames": 0, "pd": PD_MM})
    deadline = time.monotonic() + 60.0
    i, passed_while_busy = 0, 0
    while bg.estimate is None and time.monotonic() < deadline:
        k = i % len(worn)
        out = bg.apply(worn[k], FrameContext(i, i / 25.0, seen[k], w, h))
        if bg.estimate is None:
            assert out is worn[k]
            passed_while_busy += bg._pending is not None and not bg._pending.done()
        i += 1
        time.sleep(0.002)  # a frame interval would let a fast analysis finish between frames
    bg.close()
    assert passed_while_busy > 0  # frames went through while the analysis was running
    assert bg.estimate is not None and abs(bg.estimate.sphere + 6.0) <= 0.5
    # Without glasses there is nothing to correct: no confident estimate, frames untouched, and after
    # auto_max_frames the analysis stops and says so.
    plain = create("remove", {"rx": "auto", "auto_frames": 4, "auto_max_frames": 6, "rimless": True,
                              "fit_frames": 0, "auto_background": False, "pd": PD_MM})
    outs = [plain.apply(img, FrameContext(i, i / 25.0, faces[i], w, h)) for i, img in enumerate(frames)]
    assert plain.estimate is None and all(o is img for o, img in zip(outs, frames, strict=True))
    assert plain._estimator is not None and plain._estimator.frames == 6
    assert plain.models()["rx_estimate"]["state"].startswith("not measurable in 6 frames")
    # Glasses put on after the stream started: the glasses-free frames dilute the evidence, so the
    # analysis goes on past auto_frames until the lens frames outweigh them.
    late = create("remove", {"rx": "auto", "auto_frames": 4, "rimless": True, "fit_frames": 0,
                             "auto_background": False, "pd": PD_MM})
    for i in range(3):
        late.apply(frames[i], FrameContext(i, i / 25.0, faces[i], w, h))
    assert late.models()["rx_estimate"]["state"] == "analysing 3/4 frames"
    n = 3
    while late.estimate is None and n < 40:
        k = n % len(worn)
        late.apply(worn[k], FrameContext(n, n / 25.0, seen[k], w, h))
        n += 1
    assert late.estimate is not None and abs(late.estimate.sphere + 6.0) <= 0.5
    assert late.estimate.frames > 4  # not decided on the first auto_frames
    assert late.models()["rx_estimate"]["state"].startswith(f"{late.estimate.sphere:+.2f} D (duplicate")


def test_face_depth_on_real_faces(posed_frames) -> None:
    from models.face3d import landmarks_cam_mm
    from models.optics.face_depth import FaceDepth
    from stream.face import LEFT_IRIS_CENTER, NOSE_TIP, RIGHT_IRIS_CENTER

    for name, _, ctx in posed_frames:
        face = ctx.faces[0]
        depth = FaceDepth.from_face(face, ctx.camera)
        pts = landmarks_cam_mm(face, ctx.camera)
        idx = [RIGHT_IRIS_CENTER, LEFT_IRIS_CENTER, NOSE_TIP]
        z = depth.sample(face.landmarks_px[idx, :2].astype(np.float64))
        assert np.all(np.abs(z - pts[idx, 2]) < 6.0), name  # eyes closed by the fans, nose tip on the mesh
        assert depth.sample(np.array([[1.0, 1.0]]))[0] == pytest.approx(depth.background_mm), name
        assert depth.background_mm > pts[NOSE_TIP, 2] + 30.0, name  # temples are well behind the nose tip


def test_hole_fill_matches_telea_on_the_round_trip(posed_frames, monkeypatch) -> None:
    """The pixels remove cannot restore (mostly the ring behind a plus lens's rim) are filled about as well
    as OpenCV's Telea inpainting fills them, against the truth."""
    from models.optics import inversion

    def telea(img: np.ndarray, holes: np.ndarray, radius_px: float = 3.0) -> np.ndarray:
        return cv2.inpaint(img, holes.view(np.uint8), radius_px, cv2.INPAINT_TELEA)

    sq = {"ours": 0.0, "telea": 0.0}
    n = 0
    for sphere in (-8.0, 2.0, 6.0):
        rx = f"{sphere:+.2f}"
        tryon = create("tryon", {"rx": rx, "pd": 62, "draw_frame": False})
        remove = create("remove", {"rx": rx, "pd": 62, "fit_frames": 0})
        for _, frame, ctx in posed_frames:
            worn = tryon.apply(frame, ctx)
            holes = np.zeros(frame.shape[:2], bool)
            for fo in remove.optics(ctx):
                for w in fo.warps:
                    h, ww = w.mask.shape
                    holes[w.y0:w.y0 + h, w.x0:w.x0 + ww] |= inversion.invert_warp(w).invalid
            n += int(holes.sum())
            for name, fill in (("ours", inversion.fill_holes), ("telea", telea)):
                monkeypatch.setattr(inversion, "fill_holes", fill)
                back = remove.apply(worn, ctx)
                sq[name] += float(np.sum((back[holes].astype(np.float64) - frame[holes]) ** 2))
    ours, ref = (10.0 * np.log10(255.0**2 * 3 * n / sq[k]) for k in ("ours", "telea"))
    print(f"hole fill on {n} round-trip pixels: PSNR {ours:.2f} dB, Telea {ref:.2f} dB")
    assert n > 2000 and ours >= ref - 0.5, (ours, ref)
