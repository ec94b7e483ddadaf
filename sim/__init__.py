"""The infer-os simulator: a SimPy engine, cost models, hardware profiles, model specs, workloads,
metrics and the command line.  Imports ``policies``; never imports ``adapters`` (backends are found
through the ``infer_os.backends`` entry-point group)."""
