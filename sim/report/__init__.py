"""``infer-os report``: self-contained HTML pages from results folders (runs, validations,
sweeps); the entry point is ``sim.report.render.write_report``."""
