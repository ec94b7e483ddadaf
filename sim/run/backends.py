"""Executors by name: the ``infer_os.backends`` entry-point group (``sim`` is the cost-model
executor; ``torch``, ``ort``, ... come from ``adapters`` when installed)."""

from __future__ import annotations

from importlib.metadata import entry_points

from sim.errors import BackendUnavailable, UserError


def backend_names() -> list[str]:
    return sorted(ep.name for ep in entry_points(group="infer_os.backends"))


def load_backend(name: str):
    """The factory registered under ``name`` in the ``infer_os.backends`` entry-point group."""
    for ep in entry_points(group="infer_os.backends"):
        if ep.name == name:
            try:
                return ep.load()
            except ImportError as err:  # installed without its extra (e.g. no torch)
                # the extra an entry point names (``ort = "m:f [onnx]"``), else the backend's name
                extra = (getattr(ep, "extras", None) or [name])[0]
                raise BackendUnavailable(
                    f"backend {name!r} needs the Python package {err.name or err}, which is not "
                    f"installed here (pip install 'infer-os[{extra}]')") from None
    raise UserError(f"unknown backend {name!r} (installed: {', '.join(backend_names()) or 'none'})",
                    field="--backend")


def load_calibrator(backend: str):
    """The ``infer_os.calibrators`` entry point of ``backend``: ``for_scenario(scn, base_dir)``
    -> (profile, path), cached or measured now; ``speed_check(profile, scn, base_dir)``."""
    for ep in entry_points(group="infer_os.calibrators"):
        if ep.name == backend:
            return ep.load()
    raise UserError(f"backend {backend!r} has no calibrator: pass --cost-model roofline",
                    field="--backend")
