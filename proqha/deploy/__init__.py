"""Deployment: the runtimes (onnxruntime, OpenVINO, TensorRT, torch), the latency bench (``bench_run``: bench
a run folder) and the plots of search runs (never imported by the core)."""
