"""Spectacle-lens optics: prescriptions, thin-lens refraction through a placed lens, its inverse,
and estimating a worn lens's power from video."""
