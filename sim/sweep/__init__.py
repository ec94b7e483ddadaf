"""Sweeps: sweep files, point expansion, running points locally or on Dask, the results folder and
Pareto fronts."""
