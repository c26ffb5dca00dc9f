"""Cost and emissions: the kWh arithmetic against hand-worked values, totals priced at the values in
effect as the energy was attributed, the grid file's precedence over the flags, its reload and its
refusals (counted, the last good values kept), the options, and the collector's gauges over a real
ledger window."""

import json

import pytest
from prometheus_client import generate_latest
from rig import Rig

from jouletrace.exporter.config import ExporterConfig, add_arguments
from jouletrace.exporter.grid import Grid, GridValues, per_kwh
from jouletrace.exporter.sinks.prometheus.registry import build_registry, collectors
from jouletrace.exporter.intake.core import IntakeStats
from servers import samples


def test_per_kwh_by_hand():
    assert per_kwh(3.6e6, 0.12) == pytest.approx(0.12, rel=1e-15)  # 1 kWh at 0.12 a kWh
    # 0.5 J a token: a million tokens take 500 kJ = 5/36 kWh; at 0.12 a kWh that is 1/60, at 400 g a kWh 500/9 g
    assert per_kwh(0.5 * 1e6, 0.12) == pytest.approx(1 / 60, rel=1e-15)
    assert per_kwh(0.5 * 1e6, 400.0) == pytest.approx(500 / 9, rel=1e-15)
    assert per_kwh(18_000.0, 0.3) == pytest.approx(0.0015, rel=1e-15)  # an 18 kJ image: 5 Wh at 0.30 a kWh


class Energy:
    """Each model's attributed energy (J), set by the test: the Grid's source."""

    def __init__(self):
        self.joules: dict[str, float] = {}

    def __call__(self):
        return list(self.joules.items())


def write(path, data) -> None:
    path.write_text(data if isinstance(data, str) else json.dumps(data))


def test_totals_take_the_price_in_effect_when_the_energy_was_attributed(tmp_path):
    energy, path = Energy(), tmp_path / "grid.json"
    write(path, {"electricity_price": 0.10, "currency": "USD"})
    grid = Grid(GridValues(None, "", 400.0), str(path), energy, clock=lambda: 1234.0)
    grid.reload()
    energy.joules = {"llama": 3.6e6, "sd": 0.0}  # 1 kWh
    grid.snapshot()  # a scrape: the energy so far priced
    write(path, {"electricity_price": 0.20, "currency": "EUR"})
    grid.reload()  # the energy so far keeps the old price
    energy.joules = {"llama": 5.4e6, "sd": 7.2e5}  # +0.5 kWh and +0.2 kWh at 0.20 EUR
    values, cost, grams, errors, read_at = grid.snapshot()
    assert values == GridValues(0.20, "EUR", 400.0)  # the intensity is the flag's: the file leaves it out
    assert cost == pytest.approx({("llama", "USD"): 0.10, ("llama", "EUR"): 0.10, ("sd", "USD"): 0.0,
                                  ("sd", "EUR"): 0.04}, rel=1e-12)
    assert grams == pytest.approx({"llama": 600.0, "sd": 80.0}, rel=1e-12)  # 1.5 kWh and 0.2 kWh at 400 g
    assert errors == {"missing": 0, "unreadable": 0, "invalid": 0} and read_at == 1234.0


def test_the_file_wins_over_the_flags_and_leaves_them_what_it_omits(tmp_path):
    path = tmp_path / "grid.json"
    flags = GridValues(0.12, "USD", 350.0)
    cases = [({"grid_carbon_intensity": 20}, GridValues(0.12, "USD", 20.0)),
             ({"electricity_price": 0.3}, GridValues(0.3, "USD", 350.0)),
             ({"electricity_price": 0, "currency": "SEK"}, GridValues(0.0, "SEK", 350.0)),
             ({}, flags)]
    for data, expected in cases:
        write(path, data)
        grid = Grid(flags, str(path), Energy())
        grid.reload()
        assert grid.values == expected, data


@pytest.mark.parametrize("content,reason", [
    (None, "missing"),
    ("{not json", "invalid"),
    ("[0.12]", "invalid"),
    ({"electricity_price": -1, "currency": "USD"}, "invalid"),
    ({"electricity_price": True, "currency": "USD"}, "invalid"),
    ({"electricity_price": "0.12", "currency": "USD"}, "invalid"),
    ({"electricity_price": 0.12, "currency": "usd"}, "invalid"),
    ({"electricity_price": 0.12}, "invalid"),  # no currency in the file nor in the flags
    ({"electricity_price": 0.12, "currency": "USD", "carbon": 1}, "invalid"),  # a misspelt key
    ("{" + " " * (64 << 10) + "}", "invalid"),
    ("dir", "unreadable"),
])
def test_a_bad_file_is_counted_and_the_last_good_values_stay(tmp_path, caplog, content, reason):
    path, energy = tmp_path / "grid.json", Energy()
    write(path, {"electricity_price": 0.25, "currency": "CHF", "grid_carbon_intensity": 100})
    grid = Grid(GridValues(), str(path), energy)
    grid.reload()
    energy.joules = {"m": 3.6e6}
    grid.snapshot()  # a scrape: the energy so far priced
    path.unlink()
    if content == "dir":
        path.mkdir()
    elif content is not None:
        write(path, content)
    grid.reload()
    assert grid.errors[reason] == 1 and sum(grid.errors.values()) == 1
    assert grid.values == GridValues(0.25, "CHF", 100.0)
    energy.joules = {"m": 7.2e6}
    _, cost, grams, _, _ = grid.snapshot()
    assert cost == pytest.approx({("m", "CHF"): 0.5}) and grams == pytest.approx({"m": 200.0})
    assert f"grid file {path}" in caplog.text and "keeping 0.25 CHF/kWh, 100 gCO2e/kWh" in caplog.text


def config(*argv: str) -> ExporterConfig:
    import argparse
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return ExporterConfig.from_namespace(parser.parse_args(argv), environ={})


def test_options():
    assert not config().grid_configured
    cfg = config("--electricity-price", "0.12", "--currency", "USD", "--grid-carbon-intensity", "350")
    assert cfg.grid == GridValues(0.12, "USD", 350.0) and cfg.grid_configured
    assert config("--grid-file", "/run/grid.json").grid_configured
    with pytest.raises(ValueError, match="electricity price needs its currency"):
        config("--electricity-price", "0.12")
    for argv in (["--currency", "dollars"], ["--electricity-price", "-0.1"], ["--grid-carbon-intensity", "nan"]):
        with pytest.raises(SystemExit):
            config(*argv)


def test_gauges_price_the_window_of_the_energy_gauges(clock, tmp_path):
    """Each cost and emissions gauge is its energy gauge (J) in kWh times the price or intensity."""
    rig = Rig(clock)
    rig.run(3.0)
    rig.submit([rig.request(0.5, 1.0, model="llama"),
                rig.request(0.6, 1.0, model="sd", completion=0, output_kind="image", output_count=2),
                rig.request(0.7, 1.0, model="wan", completion=0, output_kind="video", output_count=1)])
    rig.run(8.0)
    grid = Grid(GridValues(0.12, "USD", 350.0), "", rig.ledger.model_energy)
    text = generate_latest(build_registry(collectors(rig.samplers, rig.ledger, IntakeStats().snapshot,
                                                     grid=grid))).decode()
    value = {(s.name, s.labels.get("model"), s.labels.get("currency")): s.value for s in samples(text)}
    for model, energy, per, cost, co2e in (
            ("llama", "energy_per_output_token_joules", 1e6, "cost_per_million_output_tokens",
             "co2e_per_million_output_tokens_grams"),
            ("sd", "energy_per_image_joules", 1, "cost_per_image", "co2e_per_image_grams"),
            ("wan", "energy_per_video_joules", 1, "cost_per_video", "co2e_per_video_grams")):
        kwh = value[(f"jouletrace_model_{energy}", model, None)] * per / 3.6e6
        assert kwh > 0
        assert value[(f"jouletrace_model_{cost}", model, "USD")] == pytest.approx(kwh * 0.12, rel=1e-12)
        assert value[(f"jouletrace_model_{co2e}", model, None)] == pytest.approx(kwh * 350, rel=1e-12)
    for model in ("llama", "sd", "wan"):  # one price all along: the totals are the energy counter's
        kwh = value[("jouletrace_model_energy_joules_total", model, None)] / 3.6e6
        assert value[("jouletrace_model_cost_total", model, "USD")] == pytest.approx(kwh * 0.12, rel=1e-12)
        assert value[("jouletrace_model_co2e_grams_total", model, None)] == pytest.approx(kwh * 350, rel=1e-12)
    assert "jouletrace_grid_file" not in text  # no grid file given


PRICED = ("jouletrace_model_cost", "jouletrace_model_co2e", "jouletrace_grid")


def test_nothing_is_exported_without_a_price_an_intensity_or_a_file(clock):
    rig = Rig(clock)
    rig.run(3.0)
    rig.submit([rig.request(0.5, 1.0)])
    rig.run(8.0)
    bare = generate_latest(build_registry(collectors(rig.samplers, rig.ledger, IntakeStats().snapshot))).decode()
    assert "jouletrace_model_energy_per_output_token_joules{" in bare
    assert not [name for name in PRICED if name in bare]  # not even a HELP line
    only_carbon = Grid(GridValues(None, "", 50.0), "", rig.ledger.model_energy)
    text = generate_latest(build_registry(collectors(rig.samplers, rig.ledger, IntakeStats().snapshot,
                                                     grid=only_carbon))).decode()
    assert "jouletrace_model_co2e_grams_total{" in text
    assert "jouletrace_model_co2e_per_million_output_tokens_grams{" in text
    assert not [name for name in PRICED if name in text and "co2e" not in name]
