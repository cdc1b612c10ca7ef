"""`rxstream process IN OUT`: run the frame pipeline over a video file with PyAV.

The output keeps the input's width, height, timestamps (pts and time base, so variable frame
rate survives), frame count and duration. Video is re-encoded with the codec family the
container expects (H.264/libx264 for .mp4/.mov/.mkv, VP9 for .webm); audio packets are copied
untouched when the output container accepts the codec, otherwise re-encoded (AAC, or Opus for
WebM). The file is written under a temporary name and renamed at the end, so a failed run never
leaves a truncated OUT behind (and never overwrites a good one).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from stream import filters as registry
from stream.config import TrackerConfig
from stream.filters.base import FilterError
from stream.frame_convert import from_rgb
from stream.model_asset import ModelAssetError, model_path
from stream.pipeline import FilterSpec, FramePipeline, FrameResult

log = logging.getLogger(__name__)


class FileModeError(Exception):
    """A problem the user can fix (bad path, container, filter or parameter); exit code 2."""


@dataclass(frozen=True)
class VideoEncoding:
    codec: str
    pix_fmt: str
    options: dict[str, str]


# Container extension -> (video encoder, audio encoder used when the input's audio cannot be copied).
_CONTAINERS: dict[str, tuple[str, str]] = {
    ".mp4": ("libx264", "aac"),
    ".m4v": ("libx264", "aac"),
    ".mov": ("libx264", "aac"),
    ".mkv": ("libx264", "aac"),
    ".webm": ("libvpx-vp9", "libopus"),
}


def video_encoding(container_ext: str, width: int, height: int) -> VideoEncoding:
    """Encoder, pixel format and options for an output of this container and size.

    4:2:0 halves chroma in both directions, so H.264 cannot code an odd width or height in it
    (its cropping is in chroma units too); odd sizes use 4:4:4 (High 4:4:4 profile), which keeps
    the exact size. VP9 codes any size in 4:2:0.
    """
    ext = container_ext.lower()
    if ext not in _CONTAINERS:
        raise FileModeError(f"unsupported output container {ext or '(none)'!r}; use one of {', '.join(_CONTAINERS)}")
    codec = _CONTAINERS[ext][0]
    if codec == "libx264":
        pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        return VideoEncoding(codec, pix_fmt, {"crf": "18", "preset": "fast"})
    # Constant quality (b:v 0) with row multithreading: good quality at usable speed.
    return VideoEncoding(codec, "yuv420p", {"crf": "30", "b": "0", "deadline": "good", "cpu-used": "4",
                                            "row-mt": "1"})


def chain_with_params(chain: str, params: dict[str, Any]) -> list[FilterSpec]:
    """Give each extra ``--key value`` to every filter of ``chain`` that has a parameter ``key``.

    Unknown filters or parameters raise FilterError naming what exists, before any work is done.
    """
    specs = FilterSpec.parse_chain(chain)
    classes = []
    for s in specs:
        if s.name not in registry.REGISTRY:
            raise FilterError(f"unknown filter {s.name!r}; available: {', '.join(sorted(registry.REGISTRY))}")
        classes.append(registry.REGISTRY[s.name])
    fields = [{f.name for f in dataclasses.fields(c.Params)} for c in classes]
    unknown = sorted(k for k in params if not any(k in fs for fs in fields))
    if unknown:
        known = "; ".join(f"{s.name}: {', '.join(sorted(fs)) or 'none'}" for s, fs in zip(specs, fields, strict=True))
        raise FilterError(f"unknown parameter(s) {', '.join('--' + k for k in unknown)} for this chain ({known})")
    return [
        FilterSpec(s.name, {**s.params, **{k: v for k, v in params.items() if k in fs}})
        for s, fs in zip(specs, fields, strict=True)
    ]


@dataclass
class RunStats:
    """Per-frame numbers gathered while processing, for the summary."""

    frames: int = 0
    frames_with_faces: int = 0
    stage_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: Counter[str] = field(default_factory=Counter)
    audio: str = "none"

    def add(self, result: FrameResult, extra_ms: dict[str, float]) -> None:
        self.frames += 1
        self.frames_with_faces += bool(result.faces)
        for k, v in {**result.timings_ms, **extra_ms}.items():
            self.stage_ms[k].append(v)
        self.errors.update(result.errors)

    def summary(self) -> str:
        pct = 100.0 * self.frames_with_faces / self.frames if self.frames else 0.0
        lines = [f"frames: {self.frames}, faces found on {self.frames_with_faces} ({pct:.1f}%), audio: {self.audio}",
                 f"{'stage':<16}{'median ms':>10}{'p95 ms':>10}"]
        first, last = ["decode", "to_rgb"], ["from_rgb+encode", "total"]  # pipeline stages in between
        order = [k for k in first if k in self.stage_ms] + [k for k in self.stage_ms if k not in first + last]
        for k in order + [k for k in last if k in self.stage_ms]:
            p50, p95 = np.percentile(self.stage_ms[k], [50, 95])
            lines.append(f"{k:<16}{p50:>10.2f}{p95:>10.2f}")
        for msg, n in self.errors.most_common(5):
            lines.append(f"error on {n} frame(s): {msg}")
        return "\n".join(lines)


def _open_input(path: Path) -> av.container.InputContainer:
    if not path.is_file():
        raise FileModeError(f"input {str(path)!r} does not exist or is not a file")
    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise FileModeError(f"cannot read {str(path)!r} as a video: {e}") from None
    if not container.streams.video:
        container.close()
        raise FileModeError(f"{str(path)!r} has no video stream")
    return container


def _frame_rate(stream: av.VideoStream) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return Fraction(rate) if rate else Fraction(30, 1)


class _Monotonic:
    """Encoders reject non-increasing pts; broken inputs sometimes repeat one. Nudge, never reorder."""

    def __init__(self) -> None:
        self.last: int | None = None

    def __call__(self, pts: int | None, fallback: int) -> int:
        p = fallback if pts is None else pts
        if self.last is not None and p <= self.last:
            p = self.last + 1
        self.last = p
        return p


def _progress(total: int | None, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total or None, unit="frame", disable=not enabled, file=sys.stderr)


def transcode(
    src: Path,
    dst: Path,
    pipeline: FramePipeline,
    progress: bool = False,
) -> RunStats:
    """Decode ``src``, run ``pipeline`` on every video frame, encode into ``dst``; returns the stats."""
    inp = _open_input(src)
    stats = RunStats()
    try:
        vin = inp.streams.video[0]
        vin.thread_type = "AUTO"  # frame + slice threads: a file has no latency budget
        ain = inp.streams.audio[0] if inp.streams.audio else None
        width, height = vin.codec_context.width, vin.codec_context.height
        enc = video_encoding(dst.suffix, width, height)
        time_base = vin.time_base or Fraction(1, 90000)
        rate = _frame_rate(vin)
        # The partial name keeps the real extension: the muxer is picked from it.
        partial = dst.with_name(f".{dst.stem}.partial{dst.suffix}")
        try:
            out = av.open(str(partial), mode="w")
        except (av.FFmpegError, OSError) as e:
            raise FileModeError(f"cannot write {str(dst)!r}: {e}") from None
        try:
            vout = out.add_stream(enc.codec, rate=rate, options=enc.options)
            vout.width, vout.height, vout.pix_fmt = width, height, enc.pix_fmt
            # Keep the input's clock: frames carry their original pts, so VFR timing is preserved.
            vout.codec_context.time_base = time_base
            vout.time_base = time_base
            aout, copy_audio = None, False
            if ain is not None:
                copy_audio = ain.codec_context.name in out.supported_codecs
                if copy_audio:
                    aout = out.add_stream_from_template(ain)
                    stats.audio = f"{ain.codec_context.name} copied"
                else:
                    codec = _CONTAINERS[dst.suffix.lower()][1]
                    rate_hz = 48000 if codec == "libopus" else (ain.codec_context.sample_rate or 48000)
                    aout = out.add_stream(codec, rate=rate_hz)
                    aout.layout = "stereo" if ain.codec_context.layout.nb_channels >= 2 else "mono"
                    stats.audio = f"{ain.codec_context.name} re-encoded to {codec}"

            nudge = _Monotonic()
            streams = [vin] + ([ain] if ain is not None else [])
            decode_ms = 0.0  # a packet may yield no frame (decoder delay): its cost goes to the next frame
            with _progress(vin.frames, progress) as bar:
                for packet in inp.demux(*streams):
                    if packet.stream.type == "audio":
                        _audio_packet(packet, aout, copy_audio, out)
                        continue
                    t0 = time.perf_counter()
                    frames = packet.decode()
                    decode_ms += (time.perf_counter() - t0) * 1e3
                    for frame in frames:
                        _video_frame(frame, pipeline, vout, out, nudge, stats, time_base, rate, decode_ms)
                        decode_ms = 0.0
                        bar.update(1)
                for frame_pkt in vout.encode(None):
                    out.mux(frame_pkt)
                if aout is not None and not copy_audio:
                    out.mux(aout.encode(None))
            out.close()
        except BaseException:
            out.close()
            partial.unlink(missing_ok=True)
            raise
        if stats.frames == 0:
            partial.unlink(missing_ok=True)
            raise FileModeError(f"{str(src)!r} has a video stream but no decodable frame")
        os.replace(partial, dst)
    finally:
        inp.close()
    return stats


def _audio_packet(packet: av.Packet, aout: Any, copy: bool, out: av.container.OutputContainer) -> None:
    if copy:
        if packet.dts is None:  # demuxer's end-of-stream flush packet: nothing to copy
            return
        packet.stream = aout
        out.mux(packet)
        return
    for frame in packet.decode():
        frame.pts = None  # the encoder's resampler re-times audio; keeping input pts would clash
        out.mux(aout.encode(frame))


def _video_frame(
    frame: av.VideoFrame,
    pipeline: FramePipeline,
    vout: Any,
    out: av.container.OutputContainer,
    nudge: _Monotonic,
    stats: RunStats,
    time_base: Fraction,
    rate: Fraction,
    decode_ms: float,
) -> None:
    t0 = time.perf_counter()
    rgb = frame.to_ndarray(format="rgb24")
    t1 = time.perf_counter()
    index = stats.frames
    timestamp = float(frame.time) if frame.time is not None else index / float(rate)
    processed, result = pipeline.process(rgb, timestamp)
    t2 = time.perf_counter()
    # Explicit size: a mid-stream resolution change is scaled back to the size the encoder was opened with.
    new = from_rgb(processed).reformat(vout.width, vout.height, vout.pix_fmt)
    new.pts = nudge(frame.pts, round(index / (rate * time_base)))
    new.time_base = time_base
    if frame.duration:
        new.duration = frame.duration  # sets the last frame's length, hence the file's duration
    for pkt in vout.encode(new):
        out.mux(pkt)
    t3 = time.perf_counter()
    stats.add(result, {"decode": decode_ms, "to_rgb": (t1 - t0) * 1e3, "from_rgb+encode": (t3 - t2) * 1e3,
                       "total": decode_ms + (t3 - t0) * 1e3})


def run_process(args: argparse.Namespace, params: dict[str, Any]) -> int:
    """Entry point of `rxstream process`; returns the exit code (2 for anything the user must fix)."""
    src, dst = Path(args.input), Path(args.output)
    try:
        if src.resolve() == dst.resolve():
            raise FileModeError("output must differ from input")
        if args.max_faces < 1:
            raise FileModeError(f"--max-faces must be at least 1, got {args.max_faces}")
        specs = chain_with_params(args.filter, params)
        video_encoding(dst.suffix, 2, 2)  # reject an unsupported container before decoding anything
        if not dst.parent.is_dir():
            raise FileModeError(f"output folder {str(dst.parent)!r} does not exist")
        tracker_config = TrackerConfig(max_faces=args.max_faces)
        if any(registry.REGISTRY[s.name].needs_faces for s in specs):
            model_path(tracker_config.model_path)  # fail now, not as an error on every frame
        pipeline = FramePipeline(specs, tracker_config, overlap=not getattr(args, "no_overlap", False))
    except (FileModeError, FilterError, ModelAssetError) as e:
        print(f"rxstream process: {e}", file=sys.stderr)
        return 2
    show = not args.no_progress and sys.stderr.isatty()
    try:
        pipeline.prepare()  # a file has no real-time budget: wait for the models instead of passing frames through
        stats = transcode(src, dst, pipeline, progress=show)
        models = pipeline.models()
    except FileModeError as e:
        print(f"rxstream process: {e}", file=sys.stderr)
        return 2
    except av.FFmpegError as e:
        print(f"rxstream process: video error while processing {str(src)!r}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rxstream process: interrupted; {str(dst)!r} not written", file=sys.stderr)
        return 130
    finally:
        pipeline.close()
    print(f"wrote {dst}\n{stats.summary()}")
    for name, m in models.items():
        served = f"{m.get('backend')} on {m.get('device')} ({m.get('precision')})" if m.get("state") == "ready" else ""
        print(f"model {name} ({m.get('filter')}): {m.get('state')} {served or m.get('error', '')}".rstrip())
    return 0
