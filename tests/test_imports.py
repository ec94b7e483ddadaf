"""The bundled hardware profiles (each loads, each figure cited).  The import-direction checks
that lived here (policies -> standard library only; sim never imports adapters) are in
test_layering.py, with the layers of sim and adapters."""

from __future__ import annotations

import pytest
import yaml

from sim.config.hardware import PROFILE_DIR, bundled_profiles, load_profile
from sim.errors import UserError


# -- hardware profiles ---------------------------------------------------------------------------
def test_the_three_bundled_profiles_are_found():
    assert {"cpu-2core-avx512", "h200", "ryzen-ai-9-hx-370"} <= set(bundled_profiles())


@pytest.mark.parametrize("name", bundled_profiles())
def test_bundled_profile_loads_and_cites_every_figure(name):
    hw = load_profile(name)
    assert hw.name == name
    assert hw.devices and hw.memories
    for obj in (*hw.memories, *hw.devices):
        figures = {k for k, v in obj.model_dump().items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        assert figures, obj.name
        uncited = {k for k in figures if not obj.sources.get(k, "").strip()}
        assert not uncited, (obj.name, uncited)
    assert load_profile(str(PROFILE_DIR / f"{name}.yaml")) == hw  # by path, too


def test_unknown_profile_name_is_a_user_error():
    with pytest.raises(UserError, match="h200"):  # lists the bundled ones
        load_profile("no-such-profile")


@pytest.mark.parametrize(
    ("where", "figure", "field"),
    [
        (("devices", 0), "peak_flops_per_s", "devices.0"),
        (("memories", 1), "efficiency", "memories.1"),
    ],
)
def test_uncited_figure_is_rejected(tmp_path, where, figure, field):
    data = yaml.safe_load((PROFILE_DIR / "h200.yaml").read_text())
    obj = data[where[0]][where[1]]
    assert figure in obj and figure in obj["sources"]
    del obj["sources"][figure]
    path = tmp_path / "uncited.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError) as err:
        load_profile(str(path))
    assert err.value.file == str(path)
    assert err.value.field == field
    assert repr(figure) in err.value.message
    assert str(path) in str(err.value) and field in str(err.value)
