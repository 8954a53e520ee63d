"""Runtimes, latency benchmarks, reports and plots (never imported by the core)."""
