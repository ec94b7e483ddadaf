"""Cost models and the cost-model executor: roofline, coefficient and calibrated step times, and
the shared memory bus."""
