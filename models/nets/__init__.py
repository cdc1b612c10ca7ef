"""Neural networks (PyTorch): style autoencoder, codebook restorer, prescription-conditioned generator.

Conventions shared by every model here: images are float32 NCHW RGB in [-1, 1]; every ``forward``
is free of data-dependent control flow in ``eval()`` so it exports to ONNX (opset 17) with static
shapes and only TensorRT-supported ops (see ``onnx_export``).
"""

from models.nets.conditioning import PrescriptionCondition
from models.nets.generator import (
    ConditionalPatchDiscriminator,
    GeneratorConfig,
    GeneratorHeads,
    PrescriptionGenerator,
    mirrored_loss,
)
from models.nets.restorer import CodebookRestorer, RestorerConfig
from models.nets.style_autoencoder import StyleAutoencoder, StyleAutoencoderConfig
from models.nets.vq import LinearGatedFusion, VectorQuantizer, VQOutput

__all__ = [
    "CodebookRestorer",
    "ConditionalPatchDiscriminator",
    "GeneratorConfig",
    "GeneratorHeads",
    "LinearGatedFusion",
    "PrescriptionCondition",
    "PrescriptionGenerator",
    "RestorerConfig",
    "StyleAutoencoder",
    "StyleAutoencoderConfig",
    "VQOutput",
    "VectorQuantizer",
    "mirrored_loss",
]
