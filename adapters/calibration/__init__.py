"""``infer-os calibrate``: microbenchmarks of a real executor, fitted into a calibrated cost-model
profile."""
