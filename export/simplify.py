"""Graph simplification with onnxslim (constant folding, dead-code and redundant-op elimination).

onnxslim is optional: without it the graph is kept as exported (the export already constant-folds with
onnxruntime's basic level) and the reason is recorded in the manifest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimplifyReport:
    tool: str  # "onnxslim 0.1.98" or "none: <why>"
    nodes_before: int
    nodes_after: int


def _node_count(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)


def simplify(path: str | Path) -> SimplifyReport:
    """Simplify ``path`` in place and validate it with the ONNX checker; never makes the graph bigger."""
    import onnx

    path = Path(path)
    before = _node_count(path)
    try:
        import onnxslim
    except ImportError:
        return SimplifyReport("none: onnxslim not installed", before, before)
    slim = onnxslim.slim(onnx.load(str(path)))
    if slim is None:
        raise RuntimeError(f"onnxslim returned no model for {path.name}")
    onnx.checker.check_model(slim)
    after = len(slim.graph.node)
    if after > before:  # never trade a known-good graph for a bigger one
        log.info("%s: onnxslim grew the graph (%d -> %d nodes); kept the original", path.name, before, after)
        return SimplifyReport(f"none: onnxslim {onnxslim.__version__} did not shrink the graph", before, before)
    tmp = path.with_name(path.name + ".slim.tmp")
    onnx.save(slim, str(tmp))
    tmp.replace(path)
    return SimplifyReport(f"onnxslim {onnxslim.__version__}", before, after)
