"""Guarded actuation: the admin API's guards (off by default, token, range, step, cool-down), the
audit log, the rollback after windows over the deadline, and restoring the original limits. The
API is served by the real handlers from a thread (BackgroundApp) over simulated GPUs on a fake clock."""

import json

import pytest
from aiohttp import web
from servers import BackgroundApp
from stack import TOKEN, api

from jouletrace.exporter.powercap.actuation import Actuator, AuditLog, Policy, Refused, token_id
from jouletrace.exporter.gpu.device import GPUError
from jouletrace.exporter.ledger.ledger import Ledger
from jouletrace.exporter.powercap.advisor import PowerCap, PowerCapConfig
from jouletrace.exporter.gpu.sampler import GPUSampler
from jouletrace.exporter.gpu.simulated import TICK_S, SimulatedGPU
from jouletrace.planning import Deadline


class Admin:
    """PowerCap over two simulated GPUs (700 W) on a fake clock, its routes served from a thread."""

    def __init__(self, clock, tmp_path, **cfg):
        self.clock = clock
        self.token_file = tmp_path / "token"
        self.token_file.write_text(f"# admin tokens\n{TOKEN}\n")
        self.audit = tmp_path / "audit.jsonl"
        self.devices = [SimulatedGPU(i, load=0.5, clock=clock) for i in range(2)]
        samplers = [GPUSampler(d, clock=clock) for d in self.devices]
        for s in samplers:
            s.step()
        ledger = Ledger(samplers, settle_delay_s=5.0, clock=clock)
        options = {"token_file": str(self.token_file), "audit_log": str(self.audit), **cfg}
        self.powercap = PowerCap(PowerCapConfig(**options), samplers, ledger, clock=clock)
        app = web.Application()
        self.powercap.add_routes(app)
        self.server = BackgroundApp(app)
        self.url = self.server.url

    def limits(self) -> list[float]:
        self.clock.advance(2 * TICK_S)  # a limit applies from the next tick
        return [d.status().power_limit_w for d in self.devices]

    def audit_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.audit.read_text().splitlines()] if self.audit.exists() else []


@pytest.fixture
def admin(clock, tmp_path):
    a = Admin(clock, tmp_path, actuation=True, max_step_w=100.0, cooldown_s=60.0, max_w=650.0)
    yield a
    a.server.stop()


def test_off_by_default(clock, tmp_path):
    a = Admin(clock, tmp_path)
    try:
        status, body, _ = api(a.url, "POST", {"watts": 600})
        assert status == 403 and "actuation is off" in body["error"]
        assert api(a.url, "DELETE")[0] == 403
        status, body, _ = api(a.url)
        assert status == 200 and body["actuation"] is False
        assert [g["limit_w"] for g in body["gpus"]] == [700.0, 700.0]
        assert a.limits() == [700.0, 700.0] and not a.audit.exists()
    finally:
        a.server.stop()


def test_a_bad_or_missing_token_is_refused(admin):
    for token in ("wrong", None, ""):
        status, body, headers = api(admin.url, "POST", {"watts": 600}, token=token)
        assert status == 401 and "bearer token" in body["error"]
        assert headers["WWW-Authenticate"].startswith("Bearer")
    assert api(admin.url, "DELETE", token="wrong")[0] == 401
    assert admin.limits() == [700.0, 700.0] and admin.audit_lines() == []


def test_a_change_is_applied_and_audited(admin):
    status, body, _ = api(admin.url, "POST", {"watts": 600, "reason": "night shift"})
    assert status == 200
    assert admin.limits() == [600.0, 600.0]
    lines = admin.audit_lines()
    assert lines == body["changes"] and len(lines) == 2
    for gpu, line in enumerate(lines):
        assert line["who"] == f"token:{token_id(TOKEN)} from 127.0.0.1"
        assert (line["action"], line["gpu"], line["from_w"], line["to_w"], line["why"]) == ("set", gpu, 700.0, 600.0,
                                                                                           "night shift")
        assert line["time"].endswith("+00:00") and line["unix"] == admin.clock.t - 2 * TICK_S
        assert TOKEN not in json.dumps(line)
    state = api(admin.url)[1]
    assert state["actuation"] is True
    assert [(g["limit_w"], g["min_w"], g["max_w"], g["original_w"]) for g in state["gpus"]] == [(600.0, 200.0, 650.0,
                                                                                              700.0)] * 2
    assert state["policy"]["max_step_w"] == 100.0 and state["cooldown_left_s"] == pytest.approx(60.0 - 2 * TICK_S)


def test_out_of_range_and_too_large_a_step_are_refused_with_one_line(admin):
    for watts, words in ((150, "outside GPU 0's allowed range 200-650 W"), (680, "allowed range 200-650 W"),
                         (450, "is a step of 250 W; at most 100 W")):
        status, body, _ = api(admin.url, "POST", {"watts": watts})
        assert status == 400 and words in body["error"] and "\n" not in body["error"], body
    for bad in ({"watts": "600"}, {"watts": True}, {}, {"watts": 600, "gpus": [7]}, {"watts": 600, "gpus": "0"},
                {"watts": 600, "reason": 3}):
        status, body, _ = api(admin.url, "POST", bad)
        assert status == 400 and body["error"], bad
    assert api(admin.url, "POST", raw=b"{not json")[0] == 400
    assert admin.limits() == [700.0, 700.0] and admin.audit_lines() == []


def test_cool_down_then_one_gpu_then_restore(admin):
    assert api(admin.url, "POST", {"watts": 600})[0] == 200
    admin.clock.advance(10)
    status, body, headers = api(admin.url, "POST", {"watts": 550})
    assert status == 429 and "--powercap-cooldown" in body["error"] and headers["Retry-After"] == "50"
    assert api(admin.url, "POST", {"watts": 600})[0] == 200  # already in force: nothing to do, no cool-down
    admin.clock.advance(50)
    status, body, _ = api(admin.url, "POST", {"watts": 500, "gpus": [1]})
    assert status == 200 and [c["gpu"] for c in body["changes"]] == [1]
    assert admin.limits() == [600.0, 500.0]
    # DELETE puts back the original limits at once: no step or cool-down guard
    status, body, _ = api(admin.url, "DELETE", {"reason": "done"})
    assert status == 200 and [(c["action"], c["from_w"], c["to_w"]) for c in body["changes"]] == [
        ("restore", 600.0, 700.0), ("restore", 500.0, 700.0)]
    assert admin.limits() == [700.0, 700.0]
    assert [line["action"] for line in admin.audit_lines()] == ["set", "set", "set", "restore", "restore"]
    assert api(admin.url, "DELETE")[1]["changes"] == []


def test_the_token_file_is_read_on_every_request(admin):
    admin.token_file.write_text("rotated-token\n")
    assert api(admin.url, "POST", {"watts": 600})[0] == 401
    assert api(admin.url, "POST", {"watts": 600}, token="rotated-token")[0] == 200
    admin.token_file.unlink()
    status, body, _ = api(admin.url, "POST", {"watts": 650}, token="rotated-token")
    assert status == 503 and "token file" in body["error"]


def test_restore_at_shutdown_puts_back_the_original_limits(admin):
    assert api(admin.url, "POST", {"watts": 600})[0] == 200
    admin.clock.advance(60)
    assert api(admin.url, "POST", {"watts": 550, "gpus": [0]})[0] == 200
    admin.powercap.restore()
    assert admin.limits() == [700.0, 700.0]
    restores = [line for line in admin.audit_lines() if line["action"] == "restore"]
    assert [(r["gpu"], r["from_w"], r["to_w"], r["who"]) for r in restores] == [(0, 550.0, 700.0, "jouletrace"),
                                                                              (1, 600.0, 700.0, "jouletrace")]
    admin.powercap.restore()  # nothing left to restore
    assert len(admin.audit_lines()) == 5


class Refusing(SimulatedGPU):
    def set_power_limit_w(self, watts):
        raise GPUError("set_power_limit", "no_permission", "needs root")


def test_a_gpu_that_refuses_undoes_the_others(clock, tmp_path):
    devices = [SimulatedGPU(0, clock=clock), Refusing(1, clock=clock)]
    actuator = Actuator(devices, Policy(max_step_w=500, cooldown_s=0), AuditLog(str(tmp_path / "a.jsonl")), clock)
    with pytest.raises(Refused) as err:
        actuator.set(500.0, None, "test", "why")
    assert err.value.status == 502 and "GPU 1 refused 500 W" in err.value.reason and "no_permission" in err.value.reason
    clock.advance(2 * TICK_S)
    assert devices[0].status().power_limit_w == 700.0  # put back
    assert not (tmp_path / "a.jsonl").exists() and actuator.changes == {}


def windows(actuator, clock, itl_ms, n=1, limit=600.0):
    for _ in range(n):
        clock.advance(60)
        actuator.observe_window(clock.t - 60, limit, {"llama": {"median_itl": itl_ms}, "other": {}})


def test_rollback_after_n_consecutive_windows_over_the_deadline(clock, tmp_path):
    audit = tmp_path / "audit.jsonl"
    devices = [SimulatedGPU(0, clock=clock)]
    guard = Deadline("median_itl", 100.0)
    actuator = Actuator(devices, Policy(max_step_w=100, cooldown_s=30, guard=guard, rollback_windows=3),
                        AuditLog(str(audit)), clock)
    windows(actuator, clock, 500.0, 5, limit=700.0)  # before any change: nothing to roll back
    actuator.set(600.0, None, "token:x from y", "try 600")
    actuator.observe_window(clock.t - 30, 600.0, {"llama": {"median_itl": 500.0}})  # began before the change
    windows(actuator, clock, 150.0, 2)
    windows(actuator, clock, 80.0)  # within the deadline: the count starts again
    windows(actuator, clock, 150.0, 2)
    actuator.observe_window(clock.t, 600.0, {"llama": {}})  # no latency: not counted
    clock.advance(2 * TICK_S)
    assert devices[0].status().power_limit_w == 600.0
    windows(actuator, clock, 150.0)
    clock.advance(2 * TICK_S)
    assert devices[0].status().power_limit_w == 700.0
    rollback = json.loads(audit.read_text().splitlines()[-1])
    assert (rollback["action"], rollback["who"], rollback["from_w"], rollback["to_w"]) == ("rollback", "jouletrace",
                                                                                        600.0, 700.0)
    assert rollback["why"] == "median_itl 150.0 ms > 100 ms in 3 consecutive windows at 600 W"
    assert actuator.changes == {"set": 1, "rollback": 1}
    windows(actuator, clock, 150.0, 5, limit=700.0)  # one level only: nothing more to roll back
    assert actuator.changes == {"set": 1, "rollback": 1}


def test_windows_at_a_limit_set_elsewhere_do_not_count(clock, tmp_path):
    devices = [SimulatedGPU(0, clock=clock)]
    actuator = Actuator(devices, Policy(cooldown_s=0, guard=Deadline("median_itl", 100.0), rollback_windows=1),
                        AuditLog(str(tmp_path / "a.jsonl")), clock)
    actuator.set(600.0, None, "t", "w")
    windows(actuator, clock, 500.0, 3, limit=650.0)  # someone else set 650 W
    assert actuator.changes == {"set": 1}


def test_invalid_configurations_fail_at_start(clock, tmp_path):
    devices = [SimulatedGPU(0, clock=clock)]
    samplers = [GPUSampler(d, clock=clock) for d in devices]
    ledger = Ledger(samplers, clock=clock)
    with pytest.raises(ValueError, match="needs --powercap-token-file"):
        PowerCap(PowerCapConfig(actuation=True), samplers, ledger)
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n")
    with pytest.raises(ValueError, match="lists no token"):
        PowerCap(PowerCapConfig(actuation=True, token_file=str(empty)), samplers, ledger)
    with pytest.raises(ValueError, match="No such file"):
        PowerCap(PowerCapConfig(actuation=True, token_file=str(tmp_path / "absent")), samplers, ledger)
    with pytest.raises(ValueError, match="--powercap-min 500 W is above --powercap-max 400 W"):
        Actuator(devices, Policy(min_w=500, max_w=400), AuditLog(), clock)
