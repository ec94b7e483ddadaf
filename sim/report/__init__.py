"""``infer-os report``: self-contained HTML pages from results folders (runs, validations, sweeps)."""
