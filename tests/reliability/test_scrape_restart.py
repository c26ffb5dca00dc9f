"""A real Prometheus scrapes the exporter every second while the exporter is restarted on the same
port: its energy counters start again from zero (a counter reset, per Prometheus conventions), and
`increase()` over the restart counts every joule that either life exported once: no double
counting, no negative jump."""

from __future__ import annotations

import time

from servers import ExporterProcess, PrometheusProcess, wait_for

COUNTERS = ("jouletrace_gpu_energy_joules_total", "jouletrace_gpu_idle_energy_joules_total")
ARGS = ("--gpu", "sim", "--sim-load", "0.6", "--counter-interval", "1", "--settle-delay", "1",
        "--shutdown-scrape-wait", "5")  # the last values stay up until Prometheus has scraped them


def samples(prom: PrometheusProcess, name: str, at: float) -> list[tuple[float, float]]:
    """Every (time, value) Prometheus holds of the one series `name` over the 5 minutes before `at`."""
    (series,) = prom.query(f"{name}[5m] @ {at:.3f}")  # one series: both lives share its labels
    return [(float(t), float(v)) for t, v in series["values"]]


def falls(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the samples lower than the one before."""
    return [i for i in range(1, len(points)) if points[i][1] < points[i - 1][1]]


def second_life_scrapes(prom: PrometheusProcess) -> int:
    points = samples(prom, COUNTERS[1], time.time())
    drops = falls(points)
    return len(points) - drops[0] if drops else 0


def test_increase_over_an_exporter_restart_counts_every_joule_once():
    exporter = ExporterProcess(*ARGS)
    prom = PrometheusProcess([f"127.0.0.1:{exporter.metrics_port}"])
    restarted = None
    try:
        idle = f"count_over_time({COUNTERS[1]}[1m]) >= 8 and {COUNTERS[1]} > 0"
        wait_for(lambda: prom.query(idle), 60, "eight scrapes of the first life")
        assert exporter.stop() == 0, exporter.output()
        restarted = ExporterProcess(*ARGS, ports=exporter.ports)
        wait_for(lambda: second_life_scrapes(prom) >= 8, 60, "eight scrapes of the second life")
        at = time.time()
        for name in COUNTERS:
            points = samples(prom, name, at)
            drops = falls(points)
            assert len(drops) == 1, f"{name}: one reset, at the restart, and no other fall: {points}"
            (restart,) = drops
            t_a, v_a = points[restart // 2]  # in the middle of the first life
            t_b, v_b = points[-1]
            expected = points[restart - 1][1] - v_a + v_b  # the rest of the first life, all of the second
            assert v_b > 0 and points[restart - 1][1] > v_a  # both lives add to it
            # a window opening just before the sample at t_a: Prometheus extrapolates by 1 ms at most
            window_ms = round((t_b - t_a) * 1000) + 1
            assert prom.scalar(f"resets({name}[{window_ms}ms] @ {t_b:.3f})") == 1
            got = prom.scalar(f"increase({name}[{window_ms}ms] @ {t_b:.3f})")
            assert abs(got - expected) <= 1e-3 * expected, f"{name}: increase {got}, samples say {expected}"
    finally:
        prom.stop()
        if restarted is not None:
            assert restarted.stop() == 0, restarted.output()
        exporter.stop()
