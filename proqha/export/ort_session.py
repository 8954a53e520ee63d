"""onnxruntime sessions as proqha opens them: CPU, every graph optimization, quiet logs."""

from __future__ import annotations


def ort_session(model_bytes: bytes | str, optimized_path: str | None = None, threads: int | None = None,
                spin: bool = True, providers: list[str] | None = None):
    """An onnxruntime CPU session with all graph optimizations (optionally saving the optimized graph), of
    a serialized graph or a file path.
    ``spin=False`` stops idle worker threads from spinning, for sessions timed side by side."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    return ort.InferenceSession(model_bytes, so, providers=providers or ["CPUExecutionProvider"])
