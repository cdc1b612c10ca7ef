"""Real-time loop: WebRTC server, signalling, browser page, per-frame pipeline, face tracking."""
