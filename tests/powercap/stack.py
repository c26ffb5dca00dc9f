"""The power-cap tests' helpers: a client of `/api/v1/powercap`, and for the power sweep a
STAND-IN of the exporter's HTTP API in this process: the real `/api/v1/energy` and
`/api/v1/powercap` handlers over samplers of a device file's GPU (written by the simulated engine),
without the span intake (a sweep reads energy and sets limits only)."""

from __future__ import annotations

import json
import threading
import urllib.request

from aiohttp import web
from servers import BackgroundApp

from jouletrace.exporter.gpu import devicefile

from jouletrace.exporter.sinks import energy_api
from jouletrace.exporter.gpu.devicefile import DeviceFile
from jouletrace.exporter.gpu.device import Selection
from jouletrace.exporter.ledger.ledger import Ledger
from jouletrace.exporter.powercap.advisor import PowerCap, PowerCapConfig
from jouletrace.exporter.gpu.sampler import GPUSampler

TOKEN = "s3cret-admin-token"


def api(url: str, method: str = "GET", body=None, token: str | None = TOKEN, raw: bytes | None = None):
    """(status, JSON body, headers) of one call to `url`/api/v1/powercap, with `token` as bearer."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url + "/api/v1/powercap", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read()), r.headers
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers


class AdminStandIn(BackgroundApp):
    """Samples the GPU of `device_file` (energy counter every 0.5 s) and serves the energy and
    power-cap API with `cfg`, actuation on; its token file and audit log are in `state_dir`."""

    def __init__(self, device_file, state_dir, **cfg):
        self.token_file, self.audit = state_dir / "admin-token", state_dir / "audit.jsonl"
        self.token_file.write_text(TOKEN + "\n")
        self.device_file = str(device_file)
        self.samplers = [GPUSampler(d, counter_interval_s=0.5)
                         for d in devicefile.open_devices(self.device_file, Selection())]
        self.powercap = PowerCap(PowerCapConfig(actuation=True, token_file=str(self.token_file),
                                                audit_log=str(self.audit), **cfg),
                                 self.samplers, Ledger(self.samplers, settle_delay_s=1.0))
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=s.run, args=(self._stop,), daemon=True) for s in self.samplers]
        for t in self._threads:
            t.start()
        app = web.Application()
        app.router.add_get("/api/v1/energy", energy_api.handler(self.samplers))
        self.powercap.add_routes(app)
        super().__init__(app)

    def requested_limit(self) -> float:
        """The power limit requested in the device file (what the engine enforces), W."""
        with DeviceFile.open(self.device_file) as f:
            return f.requested_power_limit(0)

    def changes(self) -> list[tuple[str, float, float]]:
        """(action, from W, to W) of every change audited."""
        lines = self.audit.read_text().splitlines() if self.audit.exists() else []
        return [(r["action"], r["from_w"], r["to_w"]) for r in map(json.loads, lines)]

    def stop(self) -> None:
        super().stop()
        self._stop.set()
        for t in self._threads:
            t.join(5)
