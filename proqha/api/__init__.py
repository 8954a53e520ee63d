"""The Python API: the CLI's stages as one call each, on your own ``nn.Module`` and DataLoaders.

    notes = proqha.load_weights(net, "resnet18.pth")                  # weights from a file you have
    qmodel = proqha.quantize(net, example_batch)                      # quantized twin, ranges calibrated
    proqha.fit(qmodel, train_loader, test_loader, epochs=5)           # quantization-aware training
    result = proqha.search_bits(qmodel, train_loader, calib_loader, test_loader, steps=4)
    proqha.export_onnx(qmodel, "model.onnx", (1, 28, 28), test_loader)  # validated QDQ ONNX
    rows = proqha.bench(qmodel, (1, 28, 28), test_data=test_loader)   # latency next to cost figures

``load_weights`` reads a proqha checkpoint or run folder, a plain ``state_dict()`` file, or a training
script's checkpoint holding one (under ``state_dict``, ``model_state_dict``, ``model`` or ``net``), into a
float model or its quantized twin. Batches are ``(inputs, class indices)`` pairs. Bad arguments raise
``ProqhaError`` with one line.
Export and benchmark code is imported on first use, so ``import proqha`` stays light.
"""

from proqha.api.bench import bench
from proqha.api.export import export_onnx
from proqha.api.model import evaluate, fit, quantize
from proqha.api.search import SearchResult, search_bits
from proqha.errors import ExportError
from proqha.weights import load_weights

__all__ = ["quantize", "fit", "evaluate", "search_bits", "SearchResult", "export_onnx", "ExportError", "bench",
           "load_weights"]
