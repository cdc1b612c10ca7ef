"""Configuration dataclasses for the real-time loop (one place for every tunable)."""

from __future__ import annotations

from dataclasses import dataclass, field

from stream.one_euro import OneEuroConfig


@dataclass(frozen=True)
class TrackerConfig:
    max_faces: int = 2
    min_detection_confidence: float = 0.5
    min_presence_confidence: float = 0.5
    min_tracking_confidence: float = 0.5
    blendshapes: bool = False
    # Landmark speed is measured in inter-ocular distances per second, so beta is size-free.
    landmark_smoothing: OneEuroConfig = field(
        default_factory=lambda: OneEuroConfig(min_cutoff=1.5, beta=2.0, d_cutoff=1.0)
    )
    # Pose angles in degrees, translation in mm.
    pose_smoothing: OneEuroConfig = field(
        default_factory=lambda: OneEuroConfig(min_cutoff=1.0, beta=0.05, d_cutoff=1.0)
    )
    smoothing: bool = True
    # A face keeps its id when its new centre is within this many face widths of the old one.
    id_match_radius: float = 0.6
    # Forget a face id after this many seconds without a match.
    id_forget_s: float = 1.0
    model_path: str | None = None  # None: the cached, verified face_landmarker.task
    # With max_faces > 1, mediapipe re-runs its face detector on every frame while fewer faces than
    # the maximum are tracked (+~3 ms/frame here). While one face is in view, a one-face landmarker
    # tracks it and the max_faces landmarker looks for more faces every this many frames instead
    # (0: always use the max_faces landmarker).
    search_every_n_frames: int = 30
    # Follow tracked faces by running the bundle's landmark network directly on last frame's crop
    # (stream.landmark_model, ~2x faster than mediapipe's graph here); mediapipe then only searches:
    # first frame, a lost face, and every search_every_n_frames while fewer than max_faces are tracked.
    # Off, or without ai-edge-litert, or with blendshapes: mediapipe's VIDEO graph on every frame.
    direct_landmarks: bool = True
    # XNNPACK threads for that network when no filter network runs beside it (stream.overlap runs
    # one on the other core; the tracker then takes one thread).
    landmark_threads: int = 2


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_sessions: int = 4  # browser (/offer) + WHIP publisher sessions: each runs a pipeline
    max_viewers: int = 8  # WHEP viewers: share the publisher's processed frames, but each has an encoder
    # Empty by default: never contact a public STUN/TURN server unless the operator asks.
    ice_servers: tuple[str, ...] = ()
    whip_token: str | None = None  # Bearer token for WHIP/WHEP; None = open (loopback default)
    stats_interval_s: float = 0.5
    default_filters: tuple[str, ...] = ("passthrough",)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    # Start the networks on the previous frame's faces while a frame is tracked (stream.overlap).
    overlap: bool = True
