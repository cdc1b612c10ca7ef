"""Per-model manifest JSON written next to each exported ONNX file: what a backend needs to feed the graph
(names, shapes, dtypes, normalisation) and where the graph came from (weights hash, exporter versions)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_VERSION = 1


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name, e.g. "float32"
    # How values are encoded, e.g. "RGB NCHW in [-1, 1]"; empty for plain numbers.
    normalisation: str = ""

    @staticmethod
    def from_dict(d: dict[str, Any]) -> TensorSpec:
        return TensorSpec(d["name"], tuple(int(s) for s in d["shape"]), d["dtype"], d.get("normalisation", ""))


@dataclass(frozen=True)
class Manifest:
    model: str
    onnx_file: str  # relative to the manifest's folder
    onnx_sha256: str
    opset: int
    precision: str  # fp32 | fp16 (weights/compute; IO dtypes are in the tensor specs)
    batch: int
    size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    source_weights: str  # "sha256:<hex> <file>" or "random-init seed N"
    config: dict[str, Any]  # the model's config dataclass as JSON (rebuilds the torch module)
    exporter: dict[str, str]  # library versions
    simplified: str = ""  # which simplifier ran ("onnxslim 0.1.x") or why none did
    parity: dict[str, Any] = field(default_factory=dict)
    version: int = MANIFEST_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)
        return path

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Manifest:
        if d.get("version") != MANIFEST_VERSION:
            raise ValueError(f"unsupported manifest version {d.get('version')!r} (expected {MANIFEST_VERSION})")
        d = dict(d)
        d["inputs"] = tuple(TensorSpec.from_dict(t) for t in d["inputs"])
        d["outputs"] = tuple(TensorSpec.from_dict(t) for t in d["outputs"])
        return Manifest(**d)

    @staticmethod
    def load(path: str | Path) -> Manifest:
        return Manifest.from_dict(json.loads(Path(path).read_text()))

    def onnx_path(self, manifest_path: str | Path) -> Path:
        return Path(manifest_path).parent / self.onnx_file


def manifest_path_for(onnx_path: str | Path) -> Path:
    p = Path(onnx_path)
    return p.with_name(p.stem + ".manifest.json")
