"""Training and evaluation of the neural models (``rxstream train`` / ``rxstream eval``).

config: dataclass configs from JSON/TOML; data: face crops and the held-out split; pairs: the
generator's teacher pairs; trainer: the generic loop; autoencoder/restorer/generator: per-model steps;
gan: shared adversarial pieces; evaluate: held-out metrics and contact sheets.
"""
