"""Test rigs: a fake clock, and N simulated GPUs with their samplers and a ledger on one fake clock."""

from __future__ import annotations


from jouletrace.exporter.engine import UP, EngineState
from jouletrace.exporter.intake.core import IntakeStats
from jouletrace.exporter.kubernetes.placement import PodPlacement
from jouletrace.exporter.ledger.ledger import Ledger
from jouletrace.exporter.ledger.records import RequestBatch, RequestRecord
from jouletrace.exporter.gpu.nodepower import NodePower
from jouletrace.exporter.gpu.sampler import GPUSampler
from jouletrace.exporter.gpu.simulated import SimulatedGPU, wave_load
from jouletrace.exporter.grid import Grid, GridValues
from jouletrace.exporter.powercap.advisor import PowerCap, PowerCapConfig
from jouletrace.exporter.sinks.forward import Forwarder
from jouletrace.exporter.sinks.prometheus.registry import collectors


class FakeClock:
    """A settable clock (Unix seconds)."""

    def __init__(self, t: float = 1_800_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def run_sampler(sampler, clock: FakeClock, seconds: float, step: float = 0.1) -> None:
    """Step `sampler` every `step` seconds of fake time for `seconds`."""
    for _ in range(int(round(seconds / step))):
        sampler.step()
        clock.advance(step)
    sampler.step()


class Rig:
    def __init__(self, clock, gpus: int = 1, settle_delay_s: float = 5.0, load=None, seed: int = 1, devices=None,
                 **ledger_kwargs):
        """`gpus` fresh SimulatedGPUs, or the given `devices` (then true_j needs their true_energy_j)."""
        self.clock = clock
        self.t0 = clock.t
        load = load if load is not None else (lambda t: wave_load(t, 30.0))
        self.devices = devices if devices is not None else [
            SimulatedGPU(i, seed=seed, load=load, clock=clock) for i in range(gpus)]
        self.samplers = [GPUSampler(d, clock=clock, counter_interval_s=2.0) for d in self.devices]
        self.ledger = Ledger(self.samplers, settle_delay_s=settle_delay_s, clock=clock, **ledger_kwargs)

    def run(self, seconds: float, step: float = 0.1) -> None:
        """Sample every `step` seconds and attribute every second, for `seconds` of fake time."""
        n = int(round(seconds / step))
        per_pass = int(round(1.0 / step))
        for i in range(n):
            for s in self.samplers:
                s.step()
            if i % per_pass == 0:
                self.ledger.settle()
            self.clock.advance(step)
        for s in self.samplers:
            s.step()
        self.ledger.settle()

    def submit(self, records: list[RequestRecord]) -> None:
        self.ledger.submit(RequestBatch.from_records(records))

    def measured_j(self) -> float:
        """Energy the timelines measured from their origin to what the ledger finalized."""
        total = 0.0
        for s, g in zip(self.samplers, self.ledger.gpus):
            if g.finalized_until is not None:
                total += s.timeline.energy(s.timeline.origin, g.finalized_until)
        return total

    def true_j(self) -> float:
        """What a perfect meter says over the same intervals."""
        total = 0.0
        for d, s, g in zip(self.devices, self.samplers, self.ledger.gpus):
            if g.finalized_until is not None:
                total += d.true_energy_j(g.finalized_until) - d.true_energy_j(s.timeline.origin)
        return total

    def models(self) -> dict:
        return dict(self.ledger.snapshot_models())

    def attributed_j(self) -> float:
        return sum(m.energy_j for m in self.models().values())

    def idle_j(self) -> float:
        return sum(g.idle_j for g in self.ledger.gpus)

    def request(self, start: float, duration: float, *, prompt: int = 100, completion: int = 200,
                queue: float = 0.0, prefill: float | None = None, model: str = "m", rid: str | None = None,
                span_id: int | None = None, **kw) -> RequestRecord:
        """A vLLM-like record starting `start` seconds after the rig's start."""
        s = self.t0 + start
        e = s + duration
        if prefill is None:
            prefill = min(0.05, (duration - queue) / 4)
        decode = duration - queue - prefill
        sid = (span_id if span_id is not None else abs(hash((start, duration, rid, model))) % 2**63).to_bytes(8, "big")
        return RequestRecord(request_id=rid or f"r{start:.3f}", model=model, start=s, end=e, prompt_tokens=prompt,
                             completion_tokens=completion, queue_s=queue, prefill_s=prefill, decode_s=decode,
                             trace_id=b"\x01" * 16, span_id=sid, **kw)


def every_collector(rig: Rig, grid_file: str = "/run/jouletrace/grid.json") -> list:
    """The collectors of every component over the rig's samplers and ledger, as the exporter with
    an engine scrape, span forwarding, power capping, node mode, a topology, and a price and a carbon
    intensity beside `grid_file` (read once; by default a file that does not exist) registers them."""
    engine = EngineState("http://127.0.0.1:8000/metrics", state=UP, scrapes=1, last_success=rig.clock(),
                         values={"m": {"requests_running": 1.0, "requests_waiting": 0.0, "kv_cache_usage_ratio": 0.5,
                                       "prompt_tokens": 100.0, "generation_tokens": 200.0}})
    grid = Grid(GridValues(0.12, "USD", 350.0), grid_file, rig.ledger.model_energy, clock=rig.clock)
    grid.reload()
    forwarder = Forwarder("grpc://127.0.0.1:9", gpu_uuids=list, hold_s=30.0, buffer_bytes=1 << 20,
                          timeout_s=2.0, retry_max_s=30.0)
    return collectors(rig.samplers, rig.ledger, IntakeStats().snapshot, engine_states=lambda: [engine],
                      powercap=PowerCap(PowerCapConfig(), rig.samplers, rig.ledger, clock=rig.clock),
                      forward_snapshot=forwarder.snapshot, placement=PodPlacement(rig.ledger, list, "", 1.0),
                      node_name="node-1", grid=grid, node_power=NodePower(rig.samplers),
                      topology={"rack": "r1", "row": "a", "pdu": "a1"}, clock=rig.clock)
