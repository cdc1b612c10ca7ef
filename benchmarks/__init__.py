"""Latency and quality benchmarks that write JSON (and plots) to benchmarks/results/."""
