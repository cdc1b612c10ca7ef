"""The latency benchmark's frame stamp: exact round trips, CRC maths, rejection of damage, and
survival of real low-bitrate VP8 / H.264 encoding (PyAV: libvpx, libx264)."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from benchmarks import framecode as fc

W, H = 640, 480


def _textured_frames(n: int, seed: int = 0) -> list[np.ndarray]:
    """Moving high-detail content: noise the encoder must spend bits on, so the stamp gets few."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (H // 4, W // 4, 3), dtype=np.uint8)
    base = np.kron(base, np.ones((4, 4, 1), np.uint8))
    out = []
    for i in range(n):
        f = np.roll(base, shift=(3 * i, 5 * i), axis=(0, 1)).copy()
        f ^= rng.integers(0, 48, f.shape, dtype=np.uint8)  # fresh grain every frame
        out.append(f)
    return out


def test_crc4_closed_form() -> None:
    # x^4 + x + 1 over GF(2): the CRC of 1 (i.e. x^4 mod g) is x + 1 = 0b0011; of 0b10000 it is x^8 mod g.
    assert fc.crc4(0) == 0
    assert fc.crc4(1, nbits=1) == 0b0011
    assert fc.crc4(0b10000, nbits=5) == 0b0101  # x^8 = (x^4)^2 = (x+1)^2 = x^2 + 1
    # The defining property: a codeword (message followed by its CRC) leaves remainder zero.
    for n in (1, 2, 12345, fc.MODULUS - 1):
        word = (n << fc.CRC_BITS) | fc.crc4(n)
        assert fc.crc4(word, nbits=fc.PAYLOAD_BITS + fc.CRC_BITS) == 0


@pytest.mark.parametrize("number", [0, 1, 2, 7, 255, 4096, 123_456, fc.MODULUS - 1])
def test_round_trip_clean(number: int) -> None:
    img = np.full((H, W, 3), 128, np.uint8)
    fc.stamp(img, number)
    assert fc.decode(img) == number


def test_number_wraps_and_layout_offset() -> None:
    layout = fc.StampLayout(x=W - fc.COLS * 12, y=H - 2 * 12, cell=12)
    img = np.zeros((H, W, 3), np.uint8)
    fc.stamp(img, fc.MODULUS + 5, layout)
    assert fc.decode(img, layout) == 5
    assert fc.decode(img) is None  # nothing at the default corner


def test_grayscale_input() -> None:
    img = np.full((64, 256), 30, np.uint8)
    fc.stamp(img, 999)
    assert fc.decode(img) == 999


def test_unstamped_frames_decode_to_none() -> None:
    assert fc.decode(np.zeros((H, W, 3), np.uint8)) is None
    assert fc.decode(np.full((H, W, 3), 255, np.uint8)) is None
    rng = np.random.default_rng(1)
    hits = sum(fc.decode(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)) is not None for _ in range(50))
    assert hits == 0


def test_any_single_flipped_cell_is_rejected() -> None:
    img = np.full((H, W, 3), 128, np.uint8)
    fc.stamp(img, 0xABCDE)
    c = fc.StampLayout().cell
    for r, col in [(r, col) for r in range(fc.ROWS) for col in range(2, fc.COLS)]:
        bad = img.copy()
        cell = bad[r * c:(r + 1) * c, col * c:(col + 1) * c]
        cell[...] = 255 - cell
        assert fc.decode(bad) is None, (r, col)


def test_ambiguous_cell_is_rejected() -> None:
    img = np.full((H, W, 3), 128, np.uint8)
    fc.stamp(img, 77)
    c = fc.StampLayout().cell
    img[0:c, 5 * c:6 * c] = 128  # mid-grey: neither black nor white
    assert fc.decode(img) is None


def test_stamp_that_does_not_fit_raises() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        fc.stamp(np.zeros((20, 400, 3), np.uint8), 1)
    with pytest.raises(ValueError, match="too small"):
        fc.stamp(np.zeros((H, W, 3), np.uint8), 1, fc.StampLayout(cell=2))


def _encode_decode(frames: list[np.ndarray], codec: str, bitrate: int, options: dict[str, str]) -> list[np.ndarray]:
    enc = av.CodecContext.create(codec, "w")
    enc.width, enc.height, enc.pix_fmt = W, H, "yuv420p"
    enc.bit_rate = bitrate
    enc.framerate = Fraction(30, 1)
    enc.time_base = Fraction(1, 30)
    enc.options = options
    dec = av.CodecContext.create({"libvpx": "vp8", "libx264": "h264"}[codec], "r")
    out: list[np.ndarray] = []
    for i, rgb in enumerate(frames):
        vf = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        vf.pts = i
        for pkt in enc.encode(vf):
            out.extend(f.to_ndarray(format="rgb24") for f in dec.decode(pkt))
    for pkt in enc.encode(None):
        out.extend(f.to_ndarray(format="rgb24") for f in dec.decode(pkt))
    return out


@pytest.mark.parametrize(("codec", "options"), [
    # WebRTC-like settings: real-time, no look-ahead, a low bitrate for 640x480.
    ("libvpx", {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}),
    ("libx264", {"preset": "ultrafast", "tune": "zerolatency"}),
])
def test_survives_low_bitrate_codec(codec: str, options: dict[str, str]) -> None:
    n = 45
    first = 1000
    frames = [fc.stamp(f, first + i) for i, f in enumerate(_textured_frames(n))]
    decoded = _encode_decode(frames, codec, bitrate=300_000, options=options)
    assert len(decoded) == n
    got = [fc.decode(f) for f in decoded]
    wrong = [(i, g) for i, g in enumerate(got) if g is not None and g != first + i]
    assert not wrong, f"misread stamps: {wrong[:5]}"
    readable = sum(g is not None for g in got)
    assert readable >= 0.95 * n, f"only {readable}/{n} stamps readable after {codec} at 300 kb/s"


def test_read_stamp_from_decoded_frames() -> None:
    from benchmarks.webrtc_latency import read_stamp

    img = np.full((H, W, 3), 90, np.uint8)
    fc.stamp(img, 4242)
    rgb = av.VideoFrame.from_ndarray(img, format="rgb24")
    assert read_stamp(rgb) == 4242  # converted to grey
    assert read_stamp(rgb.reformat(format="yuv420p")) == 4242  # luma plane read in place (padded rows)
    assert read_stamp(av.VideoFrame.from_ndarray(np.zeros((16, 64, 3), np.uint8), format="rgb24")) is None


def test_latency_comparison_closed_form() -> None:
    from benchmarks.webrtc_latency import compare

    res = {"passthrough": {"latency_ms": {"p50": 40.0, "p95": 50.0}},
           "landmarks": {"latency_ms": {"p50": 60.0, "p95": 100.0}}}
    assert compare(res, "passthrough") == {"landmarks/passthrough": {
        "p50_ratio": 1.5, "p95_ratio": 2.0, "p50_diff_ms": 20.0, "p95_diff_ms": 50.0}}
    assert compare(res, "missing") == {}


def test_negotiated_codec_reads_the_preferred_payload() -> None:
    from benchmarks.webrtc_latency import negotiated_codec

    sdp = ("v=0\r\nm=audio 9 UDP 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 97 99\r\n"
           "a=rtpmap:99 H264/90000\r\na=rtpmap:97 VP8/90000\r\n")
    assert negotiated_codec(sdp) == "VP8"
    assert negotiated_codec("v=0\r\n") == "?"
