"""What the tryon and remove filters share: their params turned into cached, validated objects."""

from __future__ import annotations

from typing import Any

from models.optics.prescription import Prescription, PrescriptionError, parse_prescription
from stream.filters.base import FilterError


def frame_names() -> tuple[str, ...]:
    try:
        from models.glasses.catalogue import load_catalogue

        return tuple(sorted(load_catalogue()))
    except Exception:  # catalogue unreadable: the filter still validates the name when it is used
        return ()


def load_frame(name: str) -> Any:
    from models.glasses.catalogue import CatalogueError, get_frame

    try:
        return get_frame(name)
    except CatalogueError as e:
        raise FilterError(str(e)) from None


def build_rx(rx: str, od: str, os_: str, pd: float, vertex_mm: float, index: float = 1.5) -> Prescription:
    """Prescription from the filter params (od/os override rx per eye); FilterError with the reason."""
    try:
        text = rx
        if od.strip() or os_.strip():
            text = f"OD {od.strip() or rx} OS {os_.strip() or rx}"
        return parse_prescription(text, pd_mm=pd if pd > 0 else None, vertex_mm=vertex_mm, index=index)
    except PrescriptionError as e:
        raise FilterError(f"prescription: {e}") from None


def parse_rgba(text: str, name: str) -> tuple[int, int, int, int]:
    """'#RRGGBB' or '#RRGGBBAA' (alpha 255 when omitted)."""
    t = text.strip().lstrip("#")
    if len(t) not in (6, 8) or any(c not in "0123456789abcdefABCDEF" for c in t):
        raise FilterError(f"{name}: expected #RRGGBB or #RRGGBBAA, got {text!r}")
    vals = [int(t[i:i + 2], 16) for i in range(0, len(t), 2)]
    return (vals[0], vals[1], vals[2], vals[3] if len(vals) == 4 else 255)


def check_pd(pd: float) -> None:
    """A filter's ``pd`` parameter: 0 means "measure it"; otherwise a plausible distance PD."""
    if 0.0 < pd < 40.0:
        raise ValueError(f"pd {pd:g} mm: use 40..80 mm, or 0 to measure")
