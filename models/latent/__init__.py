"""Latent editing in the style autoencoder's space, run as background keyframe jobs.

``masks`` (regions from landmarks) -> ``features`` (φ and masked statistics) -> ``projection`` (per-layer
gradient orthogonalisation) -> ``loho`` (two-stage latent optimisation) -> ``job`` (the keyframe try-on the
stream runs); ``interpolation`` (channel mappings, style-space edits, DFI) and ``retrieval`` (per-feature
gallery index, k-means, frame suggestions); ``photos`` (faces in still images, CelebA), ``model`` (the shared
autoencoder), ``cli`` (``rxstream latent``).
"""
