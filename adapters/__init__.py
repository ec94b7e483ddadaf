"""Real executors (PyTorch, ONNX Runtime) that run the engine's steps on a device and report
measured times.  They register in the ``infer_os.backends`` entry-point group; the simulator never
imports this package directly.  The torch executor arrives with the torch adapter work."""
