"""Export: the QDQ ONNX writer (``onnx_export``, ``writer``, ``ops``), the deployment profiles and their
rules (``qdq``), validation and parity (``validate``, ``parity``), and the stage that writes a validated
file of a model or a run (``stage``) or re-checks one (``recheck``)."""
