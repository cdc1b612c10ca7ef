"""Optics (prescription -> lens refraction), glasses rendering, networks, training, latent methods."""
