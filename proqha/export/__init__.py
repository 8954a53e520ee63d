"""Export: BN folding, the QDQ ONNX writer, graph validation and parity."""
