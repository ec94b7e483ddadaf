"""The ONNX Runtime executors (``--backend ort``, ``ort-migraphx``, ``ort-vitisai``): export, model
preparation, providers, the executor and its array pool."""
