"""The GPU device file: layout, seqlock against a writer process, power-limit requests, the FileGPU
backend (staleness, a lost or recreated file) under the sampler, and the exporter reading a file that
appears after it starts."""

import math
import os
import re
import subprocess
import sys
import threading
import time

import pytest
import servers
from servers import ExporterProcess, http_get, wait_for

from jouletrace.cli import build_parser
from jouletrace.exporter.gpu import backends, device as gpu
from jouletrace.exporter.config import ExporterConfig
from jouletrace.exporter.daemon import open_configured_devices
from jouletrace.exporter.gpu.devicefile import (HEADER, SLOT_SIZE, DeviceBusy, DeviceFile, DeviceFileError, FileGPU,
                                            Reading, SlotSpec)
from jouletrace.exporter.gpu.device import GPUError, Selection
from jouletrace.exporter.gpu.sampler import GPUSampler

TESTS = os.path.dirname(os.path.abspath(__file__))


def spec(index: int) -> SlotSpec:
    return SlotSpec(f"GPU-5100aaaa-0000-4000-8000-{index:012x}", f"Simulated H100 #{index}", 80 << 30, 200.0, 700.0)


H100 = spec(0)


def derived(n: int) -> Reading:
    """A reading whose every field follows from `n`, so a torn copy cannot pass for a whole one."""
    return Reading(time=float(n), energy_j=n * 2.5, power_w=100.0 + n % 500, power_limit_w=700.0 - n % 300,
                   sm_clock_hz=1e9 + n, utilization=(n % 100) / 100, memory_used_bytes=n * 4096,
                   sm_occupancy=(n % 7) / 7, tensor_activity=(n % 11) / 11, dram_bandwidth_utilization=(n % 13) / 13,
                   clocks_event_reasons=n & 0xFF)


def python(code: str, *args: str) -> subprocess.Popen:
    """`code` in another Python process, which can import this test module."""
    prelude = f"import sys; sys.path.insert(0, {TESTS!r}); "
    return subprocess.Popen([sys.executable, "-c", prelude + code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


# -- the file ---------------------------------------------------------------------------------
def test_round_trip_of_every_field(tmp_path):
    path = str(tmp_path / "gpus")
    reading = Reading(time=1_800_000_000.25, energy_j=123456.789, power_w=412.5, power_limit_w=650.0,
                      sm_clock_hz=1.755e9, utilization=0.93, memory_used_bytes=71 << 30, sm_occupancy=0.41,
                      tensor_activity=0.37, dram_bandwidth_utilization=0.66, clocks_event_reasons=0x4 | 0x80)
    with DeviceFile.create(path, [spec(0), spec(1)]) as writer:
        writer.write(1, reading)
    assert os.path.getsize(path) == HEADER.size + 2 * SLOT_SIZE
    assert os.listdir(tmp_path) == ["gpus"]  # the temporary name is gone
    with DeviceFile.open(path) as f:
        assert f.count == 2
        assert f.slots == (spec(0), spec(1))
        assert f.read(1) == reading
        assert f.read(0) == Reading(0.0, 0.0, 0.0, 0.0)  # no reading yet
        assert f.requested_power_limit(0) == 700.0  # the maximum until someone asks for less
        with pytest.raises(IndexError):
            f.read(2)


def test_bad_specs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="longer than 64 bytes"):
        DeviceFile.create(str(tmp_path / "gpus"), [SlotSpec("GPU-" + "x" * 61, "n", 1, 1.0, 2.0)])
    with pytest.raises(ValueError, match="power limit range"):
        DeviceFile.create(str(tmp_path / "gpus"), [SlotSpec("GPU-1", "n", 1, 300.0, 200.0)])
    assert not os.listdir(tmp_path)


def test_missing_foreign_truncated_and_newer_files_are_refused(tmp_path):
    path = str(tmp_path / "gpus")
    with pytest.raises(DeviceFileError, match="no device file at"):
        DeviceFile.open(path)
    DeviceFile.create(path, [spec(0), spec(1)]).close()
    good = (tmp_path / "gpus").read_bytes()
    cases = [(b"", "truncated: 0 bytes"),
             (good[:HEADER.size + SLOT_SIZE], "truncated: 288 bytes, its 2 slots need 544"),
             (b"NOTAFILE" + good[8:], "not a GPU device file"),
             (good[:8] + (2).to_bytes(4, "little") + good[12:], "version 2 device file")]
    for content, message in cases:
        with open(path, "wb") as f:
            f.write(content)
        with pytest.raises(DeviceFileError, match=message):
            DeviceFile.open(path)


def test_no_torn_reading_while_another_process_writes(tmp_path):
    path = str(tmp_path / "gpus")
    reader = DeviceFile.create(path, [spec(0)])
    writer = python("import time; from test_devicefile import derived; "
                    "from jouletrace.exporter.gpu.devicefile import DeviceFile\n"
                    "f = DeviceFile.open(sys.argv[1]); n = 0; end = time.monotonic() + 2.0\n"
                    "while time.monotonic() < end:\n"
                    "    n += 1; f.write(0, derived(n))\n"
                    "print(n)", path)
    wait_for(lambda: reader.read(0).time > 0, 30, "the writer's first reading", period_s=0.01)
    reads, seen, last = 0, set(), 0
    while writer.poll() is None:
        try:
            r = reader.read(0)
        except DeviceBusy:  # the writer was descheduled mid-write (a busy machine): refused, not torn
            continue
        n = int(r.time)
        assert r == derived(n), f"torn reading {r}"
        assert n >= last
        reads, last = reads + 1, n
        seen.add(n)
    written = int(writer.stdout.read())
    assert writer.returncode == 0
    assert reader.read(0) == derived(written)
    assert reads > 1_000 and len(seen) > 100, (reads, len(seen), written)  # fewer where CPUs are busy
    reader.close()


def test_requested_power_limit_is_range_checked_and_seen_by_other_processes(tmp_path):
    path = str(tmp_path / "gpus")
    engine = DeviceFile.create(path, [spec(0), spec(1)])
    with pytest.raises(ValueError, match="outside GPU 0's range 200-700 W"):
        engine.request_power_limit(0, 150.0)
    with pytest.raises(ValueError):
        engine.request_power_limit(0, math.nan)
    tool = python("from jouletrace.exporter.gpu.devicefile import DeviceFile\n"
                  "f = DeviceFile.open(sys.argv[1]); f.request_power_limit(1, 450.0)\n"
                  "try:\n    f.request_power_limit(1, 701.0)\nexcept ValueError as e:\n    print(e)", path)
    out, _ = tool.communicate(timeout=30)
    assert tool.returncode == 0, out
    assert "outside GPU 1's range" in out
    assert engine.requested_power_limit(1) == 450.0  # through the engine's own, earlier mapping
    assert engine.requested_power_limit(0) == 700.0
    engine.close()


# -- the backend ------------------------------------------------------------------------------
def test_file_gpu_reads_the_slot(tmp_path):
    path = str(tmp_path / "gpus")
    engine = DeviceFile.create(path, [spec(0), spec(1)])
    t = time.time() - 0.05
    engine.write(1, Reading(t, 1234.5678, 321.0, 650.0, 1.6e9, 0.8, 20 << 30, 0.5, 0.4, 0.3, 0x4))
    dev = backends.open_devices("sim", Selection.parse("GPU-5100aaaa-0000-4000-8000-000000000001"),
                           sim_options={"count": 2}, sim_device_file=path)[0]
    assert isinstance(dev, FileGPU)
    assert (dev.backend, dev.index, dev.uuid, dev.name) == ("sim", 1, spec(1).uuid, spec(1).name)
    assert dev.energy_mj() == (1_234_567, t)
    assert dev.power_w() == (321.0, t)
    st = dev.status()
    assert (st.power_limit_w, st.sm_clock_hz, st.utilization, st.memory_used_bytes, st.memory_total_bytes) == \
        (650.0, 1.6e9, 0.8, 20 << 30, 80 << 30)
    assert (st.sm_occupancy, st.tensor_activity, st.dram_bandwidth_utilization, st.temperature_c) == \
        (0.5, 0.4, 0.3, None)
    assert st.clocks_event_reasons == {"sw_power_cap": True, "hw_slowdown": False, "sw_thermal": False,
                                       "hw_thermal": False, "hw_power_brake": False}


def code_of(call) -> str:
    with pytest.raises(GPUError) as err:
        call()
    return err.value.code


def test_file_gpu_stale_lost_and_back(tmp_path, clock):
    path = str(tmp_path / "gpus")
    dev = FileGPU(path, 0, clock=clock)  # before the engine starts
    assert dev.uuid == "sim-slot-0"
    assert code_of(dev.power_w) == "gpu_lost"
    assert code_of(dev.reopen) == "gpu_lost"
    engine = DeviceFile.create(path, [H100])
    assert code_of(dev.energy_mj) == "gpu_lost"  # until reopened
    dev.reopen()
    assert dev.uuid == H100.uuid
    assert code_of(dev.status) == "stale"  # created, never written
    engine.write(0, Reading(clock.t, 10.0, 100.0, 700.0))
    clock.advance(4.9)
    assert dev.power_w() == (100.0, clock.t - 4.9)
    clock.advance(0.2)
    assert code_of(dev.power_w) == "stale"
    engine.write(0, Reading(clock.t, 10.0, math.nan, 700.0))
    assert code_of(dev.power_w) == "gpu_lost"  # a corrupt reading
    os.unlink(path)
    assert code_of(dev.power_w) == "gpu_lost"
    DeviceFile.create(path, [H100]).write(0, Reading(clock.t, 0.5, 90.0, 700.0))
    assert code_of(dev.power_w) == "gpu_lost"  # replaced: the old mapping is no longer the engine's
    dev.reopen()
    assert dev.energy_mj() == (500, clock.t)
    with open(path, "r+b") as f:
        f.write(b"garbage!")  # over the magic
    assert code_of(dev.reopen) == "gpu_lost"
    assert code_of(FileGPU(path, 0).power_w) == "gpu_lost"
    DeviceFile.create(path, [H100])
    assert code_of(FileGPU(path, 1).reopen) == "gpu_lost"  # a slot the file lacks
    engine.close()


def test_the_option_opens_file_gpus_even_before_the_file_exists(tmp_path, monkeypatch):
    path = str(tmp_path / "gpus")
    monkeypatch.setenv("JOULETRACE_SIM_DEVICE_FILE", path)
    cfg = ExporterConfig.from_namespace(build_parser().parse_args(["exporter", "--gpu", "sim", "--sim-gpus", "2"]))
    assert cfg.sim_device_file == path
    devices = open_configured_devices(cfg)
    assert [(type(d), d.index, d.uuid) for d in devices] == [(FileGPU, 0, "sim-slot-0"), (FileGPU, 1, "sim-slot-1")]


class Engine:
    """A stand-in for the simulated engine: constant power, a reading every tick, restartable."""

    def __init__(self, path: str, clock, power_w: float):
        self.path, self.clock, self.power_w = path, clock, power_w
        self.restart()

    def restart(self) -> None:
        self.file = DeviceFile.create(self.path, [H100])
        self.energy_j, self.t = 0.0, self.clock.t

    def tick(self) -> None:
        self.energy_j += self.power_w * (self.clock.t - self.t)
        self.t = self.clock.t
        self.file.write(0, Reading(self.t, self.energy_j, self.power_w, 700.0))


def run(engine: Engine, sampler: GPUSampler, clock, seconds: float) -> None:
    for _ in range(round(seconds / 0.1)):
        engine.tick()
        sampler.step()
        clock.advance(0.1)


def test_engine_restart_is_a_counter_reset_and_totals_stay_sane(tmp_path, clock):
    path = str(tmp_path / "gpus")
    engine = Engine(path, clock, 300.0)
    sampler = GPUSampler(FileGPU(path, 0, clock=clock), clock=clock, counter_interval_s=2.0)
    run(engine, sampler, clock, 20.0)
    before = sampler.timeline.total_j
    assert sampler.healthy and sampler.counter_resets == 0
    assert before == pytest.approx(300.0 * (sampler.timeline.settled_until - sampler.timeline.origin), abs=0.01)
    engine.restart()
    run(engine, sampler, clock, 20.0)
    assert sampler.healthy
    assert sampler.counter_resets == 1
    assert sampler.errors[("power", "gpu_lost")] == 1
    gained = sampler.timeline.total_j - before
    assert gained == pytest.approx(300.0 * (sampler.timeline.settled_until - sampler.timeline.origin) - before,
                                   rel=0.02)


# -- the exporter -----------------------------------------------------------------------------
def test_exporter_starts_before_the_file_and_reads_it_once_written(tmp_path, monkeypatch):
    path = str(tmp_path / "gpus")
    ports = []  # the exporter's, metrics first
    free_port = servers.free_port

    def recorded_free_port() -> int:
        ports.append(free_port())
        return ports[-1]

    monkeypatch.setattr(servers, "free_port", recorded_free_port)
    stop = threading.Event()

    def metrics() -> str:
        return http_get(f"http://127.0.0.1:{ports[0]}/metrics")[1]

    def engine() -> None:  # starts once the exporter serves and reports the file missing
        wait_for(lambda: len(ports) == 3 and 'code="gpu_lost"' in metrics(), 30, "the exporter's missing-file errors")
        f = DeviceFile.create(path, [H100])
        t0 = time.time()
        while not stop.wait(0.05):
            f.write(0, Reading(time.time(), 250.0 * (time.time() - t0), 250.0, 700.0))

    thread = threading.Thread(target=engine, daemon=True)
    def energy() -> float:
        m = re.search(r'^jouletrace_gpu_energy_joules_total\{(.*)\} (\S+)$', metrics(), re.M)
        assert m and 'backend="sim"' in m.group(1) and f'uuid="{H100.uuid}"' in m.group(1), m
        return float(m.group(2))

    thread.start()
    try:
        exporter = ExporterProcess("--gpu", "sim", "--sim-device-file", path, "--counter-interval", "0.5")
        try:
            first = energy()
            wait_for(lambda: energy() > first + 100, 20, "energy to rise")
            assert 'jouletrace_gpu_power_watts{backend="sim",gpu="0",uuid="' + H100.uuid + '"} 250.0' in metrics()
        finally:
            assert exporter.stop() == 0, exporter.output()
    finally:
        stop.set()
        thread.join(5)
