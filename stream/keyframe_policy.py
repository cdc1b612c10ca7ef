"""When to take a latent try-on keyframe, and which cache entry its result belongs to (pure functions).

A keyframe is expensive (a latent optimisation of seconds on CPU), so the frame path takes one only when
the last result stops being a good match for what the camera sees:

- ``first``: the face has no keyframe yet;
- ``item``: the user picked another try-on item (frame or appearance reference);
- ``pose``: the head turned past ``pose_threshold_deg`` in yaw, pitch or roll since the last keyframe;
- ``timer``: ``timer_s`` passed since the last keyframe (lighting and expression drift; 0 disables).

Results are cached per (session, face, item, pose bin): turning back towards a pose seen before reuses the
layer made there instead of recomputing it. Bins are ``bin_deg`` wide and centred on 0 deg, so a frontal
face (|angle| < bin/2) is always bin 0 rather than straddling a bin edge.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Literal

Angles = tuple[float, float, float]  # (yaw, pitch, roll) in degrees, the tracker's HeadPose convention
PoseBin = tuple[int, int, int]
Reason = Literal["first", "item", "pose", "timer"]


@dataclass(frozen=True)
class PolicyConfig:
    pose_threshold_deg: float = 12.0
    timer_s: float = 0.0  # 0: no timed refresh
    bin_deg: float | None = None  # None: the pose threshold (then every pose keyframe lands in a new bin)

    def __post_init__(self) -> None:
        if not (self.pose_threshold_deg > 0 and math.isfinite(self.pose_threshold_deg)):
            raise ValueError(f"pose_threshold_deg must be a positive number, got {self.pose_threshold_deg}")
        if not (self.timer_s >= 0 and math.isfinite(self.timer_s)):
            raise ValueError(f"timer_s must be >= 0, got {self.timer_s}")
        if self.bin_deg is not None and not (self.bin_deg > 0 and math.isfinite(self.bin_deg)):
            raise ValueError(f"bin_deg must be a positive number, got {self.bin_deg}")

    @property
    def bin_width_deg(self) -> float:
        return self.pose_threshold_deg if self.bin_deg is None else self.bin_deg


@dataclass(frozen=True)
class KeyframeMark:
    """What the last keyframe of one face was taken at."""

    pose: Angles
    time_s: float
    item: Hashable


@dataclass(frozen=True)
class KeyframeKey:
    """Cache key of one keyframe result. ``session`` separates streams sharing one worker pool."""

    session: str
    face_id: int
    item: Hashable
    pose_bin: PoseBin

    @property
    def slot(self) -> tuple[str, int]:
        """Jobs of one slot supersede each other (newest wins): one face of one session."""
        return self.session, self.face_id


def angle_diff_deg(a: float, b: float) -> float:
    """|a - b| on the circle, in [0, 180] (roll may wrap at +-180 for a face upside down)."""
    d = (a - b) % 360.0
    return min(d, 360.0 - d)


def pose_delta_deg(a: Angles, b: Angles) -> float:
    """The largest of the yaw, pitch and roll differences: each axis changes the look on its own, so a
    10 deg turn matters as much whether or not the other axes moved."""
    return max(angle_diff_deg(x, y) for x, y in zip(a, b, strict=True))


def keyframe_reason(last: KeyframeMark | None, pose: Angles, time_s: float, item: Hashable,
                    cfg: PolicyConfig) -> Reason | None:  # fmt: skip
    """Why a keyframe should be taken now, or None to keep the last one. Item change outranks pose,
    pose outranks the timer (the caller may treat a timer refresh differently: it bypasses the cache)."""
    if last is None:
        return "first"
    if item != last.item:
        return "item"
    if pose_delta_deg(pose, last.pose) >= cfg.pose_threshold_deg:
        return "pose"
    # A clock that went backwards (a new stream's timestamps) also restarts the timer.
    if cfg.timer_s > 0 and (time_s - last.time_s >= cfg.timer_s or time_s < last.time_s):
        return "timer"
    return None


def pose_bin(pose: Angles, bin_deg: float) -> PoseBin:
    """Bin index per axis: round(angle / bin), i.e. bins centred on multiples of ``bin_deg``. Angles are
    wrapped to [-180, 180) first, so 190 and -170 deg are the same bin."""
    if not (bin_deg > 0 and math.isfinite(bin_deg)):
        raise ValueError(f"bin_deg must be a positive number, got {bin_deg}")
    out = []
    for a in pose:
        if not math.isfinite(a):
            raise ValueError(f"pose angles must be finite, got {pose}")
        wrapped = (a + 180.0) % 360.0 - 180.0
        out.append(math.floor(wrapped / bin_deg + 0.5))  # round half up: no banker's rounding at bin edges
    return out[0], out[1], out[2]


def keyframe_key(session: str, face_id: int, item: Hashable, pose: Angles, cfg: PolicyConfig) -> KeyframeKey:
    return KeyframeKey(session, face_id, item, pose_bin(pose, cfg.bin_width_deg))
