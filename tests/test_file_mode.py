"""`rxstream process`: playable output with the input's size, timing and audio; clean errors."""

from __future__ import annotations

import json
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from stream.cli import main
from stream.file_mode import chain_with_params, video_encoding
from stream.filters.base import FilterError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def ffprobe(path: Path) -> dict:
    """Streams (video frames counted by decoding everything: a broken file fails here) and format."""
    res = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_streams", "-show_format", "-of", "json", str(path)],
        capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0 and res.stderr.strip() == "", res.stderr
    return json.loads(res.stdout)


def frame_times(path: Path) -> list[float]:
    with av.open(str(path)) as c:
        return [float(f.time) for f in c.decode(video=0)]


def video_of(probe: dict) -> dict:
    return next(s for s in probe["streams"] if s["codec_type"] == "video")


def audio_of(probe: dict) -> dict | None:
    return next((s for s in probe["streams"] if s["codec_type"] == "audio"), None)


def trim(src: Path, dst: Path, seconds: float) -> None:
    """Copy the first ``seconds`` of every video/audio stream without re-encoding.

    Cutting on decode order (dts) keeps every kept frame's references, so the cut file decodes cleanly.
    """
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        streams = [s for s in inp.streams if s.type in ("video", "audio")]
        mapping = {s.index: out.add_stream_from_template(s) for s in streams}
        for pkt in inp.demux(*streams):
            if pkt.dts is None or float(pkt.dts * pkt.time_base) >= seconds:
                continue
            pkt.stream = mapping[pkt.stream.index]
            out.mux(pkt)


def write_vfr(dst: Path, frames: list[np.ndarray], pts_ms: list[int]) -> None:
    """A lossless (FFV1) variable-frame-rate file with exactly these timestamps."""
    h, w = frames[0].shape[:2]
    with av.open(str(dst), "w") as out:
        s = out.add_stream("ffv1", rate=25)
        s.width, s.height, s.pix_fmt = w, h, "yuv444p"
        s.codec_context.time_base = s.time_base = Fraction(1, 1000)
        for img, pts in zip(frames, pts_ms, strict=True):
            f = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv444p")
            f.pts, f.time_base = pts, Fraction(1, 1000)
            out.mux(s.encode(f))
        out.mux(s.encode(None))


@pytest.fixture(scope="module")
def short_d12(shared_data, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clips") / "d12_3s.mp4"
    trim(shared_data / "video" / "liveportrait_d12.mp4", path, 3.0)
    return path


def test_process_keeps_size_duration_frames_and_audio(short_d12, tmp_path, capsys, landmarker_model):
    out = tmp_path / "out.mp4"
    assert main(["process", str(short_d12), str(out), "--filter", "landmarks", "--no-progress"]) == 0
    src, dst = ffprobe(short_d12), ffprobe(out)
    vs, vd = video_of(src), video_of(dst)
    assert (vd["width"], vd["height"]) == (vs["width"], vs["height"]) == (512, 512)
    assert vd["codec_name"] == "h264" and vd["pix_fmt"] == "yuv420p"
    n = int(vs["nb_read_frames"])
    assert int(vd["nb_read_frames"]) == n and 75 <= n <= 78  # cut on dts: a B-frame or two past 3 s
    assert vd["r_frame_rate"] == vs["r_frame_rate"] == "25/1"
    assert abs(float(vd["duration"]) - float(vs["duration"])) <= 1 / 25
    assert frame_times(out) == pytest.approx(frame_times(short_d12), abs=1e-6)  # same pts, frame for frame
    a_s, a_d = audio_of(src), audio_of(dst)
    assert a_s is not None and a_d is not None
    assert a_d["codec_name"] == a_s["codec_name"] == "aac" and a_d["nb_frames"] == a_s["nb_frames"]  # copied
    assert abs(float(a_d["duration"]) - float(a_s["duration"])) < 0.05
    printed = capsys.readouterr().out
    assert f"frames: {n}, faces found on {n} (100.0%)" in printed and "aac copied" in printed
    assert "track" in printed and "landmarks" in printed
    # The overlay really is drawn (the pipeline ran), and nothing but the output is left behind.
    with av.open(str(short_d12)) as a, av.open(str(out)) as b:
        fa, fb = next(a.decode(video=0)).to_ndarray(format="rgb24"), next(b.decode(video=0)).to_ndarray(format="rgb24")
    assert (np.abs(fa.astype(int) - fb).max(axis=2) > 60).mean() > 0.002
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def test_odd_size_variable_frame_rate(d12_frames_small, tmp_path, landmarker_model):
    src = tmp_path / "odd_vfr.mkv"
    pts = [0, 40, 90, 100, 180, 200, 260, 400, 433, 466, 500, 540]  # irregular gaps, like a webcam dropping frames
    write_vfr(src, d12_frames_small, pts)
    for name in ("out.mp4", "out.webm"):
        out = tmp_path / name
        assert main(["process", str(src), str(out), "--filter", "landmarks", "--no-progress", "--points", "false"]) == 0
        v = video_of(ffprobe(out))
        assert (v["width"], v["height"]) == (641, 479)
        assert int(v["nb_read_frames"]) == len(pts)
        assert frame_times(out) == pytest.approx([p / 1000 for p in pts], abs=1e-3)
        assert v["codec_name"] == ("h264" if name.endswith("mp4") else "vp9")


@pytest.fixture(scope="module")
def d12_frames_small(clip_frames) -> list[np.ndarray]:
    return [cv2.resize(np.asarray(f), (641, 479), interpolation=cv2.INTER_AREA)
            for f in clip_frames("liveportrait_d12", 12).frames]


def test_webm_reencodes_audio_to_opus(short_d12, tmp_path, capsys):
    out = tmp_path / "out.webm"
    assert main(["process", str(short_d12), str(out), "--no-progress"]) == 0  # passthrough: no model needed
    probe, src = ffprobe(out), ffprobe(short_d12)
    assert video_of(probe)["codec_name"] == "vp9" and audio_of(probe)["codec_name"] == "opus"
    assert int(video_of(probe)["nb_read_frames"]) == int(video_of(src)["nb_read_frames"])
    assert frame_times(out) == pytest.approx(frame_times(short_d12), abs=1e-3)  # WebM clock is 1 ms
    # Opus adds a few ms of priming/padding; the file must still last as long as the source, within a frame.
    assert abs(float(probe["format"]["duration"]) - float(src["format"]["duration"])) <= 1 / 25
    assert "re-encoded to libopus" in capsys.readouterr().out


def test_video_encoding_choice():
    assert video_encoding(".mp4", 640, 480).pix_fmt == "yuv420p"
    assert video_encoding(".MKV", 641, 480).pix_fmt == "yuv444p"  # 4:2:0 H.264 cannot code an odd size
    assert video_encoding(".webm", 641, 479).codec == "libvpx-vp9"


def test_params_go_to_the_filters_that_have_them():
    specs = chain_with_params("passthrough+landmarks", {"points": "false", "axis_mm": "40"})
    assert specs[0].params == {} and specs[1].params == {"points": "false", "axis_mm": "40"}
    with pytest.raises(FilterError, match=r"--colour .*landmarks: axes, axis_mm, contours, labels, points"):
        chain_with_params("passthrough+landmarks", {"colour": "red"})


def _fails(argv: list[str], capsys, message: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_errors_exit_2_with_a_clear_message(tmp_path, capsys, short_d12):
    out = tmp_path / "out.mp4"
    _fails(["process", str(tmp_path / "missing.mp4"), str(out)], capsys, "does not exist")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    _fails(["process", str(junk), str(out)], capsys, "cannot read")
    wav = tmp_path / "tone.wav"
    with av.open(str(wav), "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        c.mux(s.encode(frame))
        c.mux(s.encode(None))
    _fails(["process", str(wav), str(out)], capsys, "has no video stream")
    _fails(["process", str(short_d12), str(out), "--filter", "nope"], capsys, "unknown filter 'nope'")
    _fails(["process", str(short_d12), str(out), "--filter", "landmarks", "--axis-mm", "1e6"], capsys, "axis_mm")
    _fails(["process", str(short_d12), str(out), "--bogus", "1"], capsys, "unknown parameter(s) --bogus")
    _fails(["process", str(short_d12), str(tmp_path / "out.avi")], capsys, "unsupported output container")
    _fails(["process", str(short_d12), str(short_d12)], capsys, "output must differ")
    _fails(["process", str(short_d12), str(out), "--max-faces", "0"], capsys, "--max-faces")
    assert not out.exists()


def test_missing_model_is_a_clear_error_before_any_work(short_d12, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RXSTREAM_CACHE", str(tmp_path / "empty-cache"))
    out = tmp_path / "out.mp4"
    _fails(["process", str(short_d12), str(out), "--filter", "landmarks"], capsys, "rxstream fetch-model")
    assert not out.exists()
    assert main(["process", str(short_d12), str(out), "--no-progress"]) == 0  # passthrough needs no model
