"""A machine-readable frame stamp that survives lossy video codecs.

Glass-to-glass latency needs to know *which* sent frame a received frame is. We draw the frame
number into a corner as a grid of large black/white cells: 2 rows of 14 cells, each ``cell`` px
square (16 px by default: one codec macroblock, so a cell is never split across blocks at the
default origin). Each row starts with a white and a black reference cell; their decoded levels
give the threshold, so the code reads correctly after the encoder shifts contrast or brightness.
The other 24 cells carry a 20-bit frame number (mod 2**20, 9.7 h at 30 fps) and a CRC-4 over it:
a damaged or absent stamp decodes to ``None``, never to a wrong number (with probability 15/16
for random damage; the reference cells and the per-cell margin catch most of the rest).

Cells are grey-level (R=G=B) so chroma subsampling cannot blur them, and only the central half
of each cell is sampled, away from ringing at cell edges.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAYLOAD_BITS = 20
CRC_BITS = 4
COLS = 14
ROWS = 2
MODULUS = 1 << PAYLOAD_BITS
# Data-cell order: row-major, skipping the two reference cells at the start of each row.
_DATA_CELLS = [(r, c) for r in range(ROWS) for c in range(2, COLS)]
assert len(_DATA_CELLS) == PAYLOAD_BITS + CRC_BITS


@dataclass(frozen=True)
class StampLayout:
    """Where the stamp sits: top-left corner ``(x, y)`` in px and the cell size in px."""

    x: int = 0
    y: int = 0
    cell: int = 16

    @property
    def width(self) -> int:
        return COLS * self.cell

    @property
    def height(self) -> int:
        return ROWS * self.cell


def crc4(value: int, nbits: int = PAYLOAD_BITS) -> int:
    """CRC-4/ITU (polynomial x^4 + x + 1, init 0) of the ``nbits`` low bits of ``value``, MSB first."""
    crc = 0
    for i in range(nbits - 1, -1, -1):
        bit = (value >> i) & 1
        top = (crc >> 3) & 1
        crc = (crc << 1) & 0xF
        if top ^ bit:
            crc ^= 0x3
    return crc


def code_bits(number: int) -> np.ndarray:
    """The 24 data-cell bits for ``number`` (taken mod 2**20): payload MSB first, then the CRC."""
    n = int(number) % MODULUS
    word = (n << CRC_BITS) | crc4(n)
    total = PAYLOAD_BITS + CRC_BITS
    return np.array([(word >> (total - 1 - i)) & 1 for i in range(total)], dtype=np.uint8)


def _cell_grid(number: int) -> np.ndarray:
    """ROWS x COLS array of 0/1 (1 = white), reference cells included."""
    grid = np.zeros((ROWS, COLS), np.uint8)
    grid[:, 0] = 1  # white reference
    grid[:, 1] = 0  # black reference
    for (r, c), b in zip(_DATA_CELLS, code_bits(number), strict=True):
        grid[r, c] = b
    return grid


def _check_fits(shape: tuple[int, ...], layout: StampLayout) -> None:
    h, w = shape[:2]
    if layout.cell < 4:
        raise ValueError(f"cell size {layout.cell} px is too small to survive compression (>= 4)")
    if layout.x < 0 or layout.y < 0 or layout.x + layout.width > w or layout.y + layout.height > h:
        raise ValueError(f"a {layout.width}x{layout.height} stamp at ({layout.x},{layout.y}) "
                         f"does not fit a {w}x{h} frame")


def stamp(image: np.ndarray, number: int, layout: StampLayout = StampLayout()) -> np.ndarray:
    """Draw the code for ``number`` into ``image`` (HxWx3 or HxW uint8) in place; returns ``image``."""
    _check_fits(image.shape, layout)
    cells = _cell_grid(number) * 255
    block = np.kron(cells, np.ones((layout.cell, layout.cell), np.uint8))
    region = image[layout.y:layout.y + layout.height, layout.x:layout.x + layout.width]
    region[...] = block[..., None] if image.ndim == 3 else block
    return image


def _luma(region: np.ndarray) -> np.ndarray:
    if region.ndim == 2:
        return region.astype(np.float32)
    # BT.601 luma: the codec keeps luma at full resolution, so decode from it.
    return region[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def cell_levels(image: np.ndarray, layout: StampLayout = StampLayout()) -> np.ndarray:
    """ROWS x COLS mean luma of the central half of every cell."""
    _check_fits(image.shape, layout)
    y = _luma(image[layout.y:layout.y + layout.height, layout.x:layout.x + layout.width])
    c, q = layout.cell, layout.cell // 4
    cells = y.reshape(ROWS, c, COLS, c)[:, q:c - q, :, q:c - q]
    return cells.mean(axis=(1, 3))


def decode(image: np.ndarray, layout: StampLayout = StampLayout(), *, min_contrast: float = 64.0,
           margin: float = 0.15) -> int | None:
    """The stamped frame number, or ``None`` when the stamp is absent, too damaged or fails its CRC.

    ``min_contrast``: least white-minus-black reference difference (luma levels) for a readable
    stamp. ``margin``: cells within this fraction of that contrast of the threshold are ambiguous.
    """
    levels = cell_levels(image, layout)
    bits = []
    for r in range(ROWS):
        white, black = levels[r, 0], levels[r, 1]
        contrast = white - black
        if contrast < min_contrast:
            return None
        thr = 0.5 * (white + black)
        row = levels[r, 2:]
        if np.any(np.abs(row - thr) < margin * contrast):
            return None
        bits.extend((row > thr).astype(np.uint8).tolist())
    word = 0
    for b in bits:
        word = (word << 1) | b
    number, crc = word >> CRC_BITS, word & ((1 << CRC_BITS) - 1)
    return number if crc4(number) == crc else None
