"""The GPU device file: a simulated engine publishes its GPUs' readings here; the exporter reads them.

One process (the engine) writes readings; any process may read them and may set a slot's requested
power limit, which the engine applies from its next step. The file is memory-mapped; all fields are
little-endian and 8-byte aligned.

Header, 32 bytes::

    0   magic         8s   b"JTGPUDEV"
    8   version       u32  1
    12  slot_count    u32
    16  slot_size     u32  256
    20  (zero)        12 bytes

Then `slot_count` slots of 256 bytes; slot i starts at 32 + 256 * i::

    0   uuid                        64s  UTF-8, NUL-padded       \\
    64  name                        64s  UTF-8, NUL-padded        | fixed when the file is created
    128 memory_total_bytes          u64  bytes                    |
    136 power_limit_min_w           f64  W                        |
    144 power_limit_max_w           f64  W                       /
    152 requested_power_limit_w     f64  W, written by anyone, read by the engine
    160 seq                         u64  seqlock of the reading below
    168 time                        f64  Unix s of the reading   \\
    176 energy_j                    f64  J, cumulative            |
    184 power_w                     f64  W                        |
    192 power_limit_w               f64  W, the enforced limit    |
    200 sm_clock_hz                 f64  Hz                       | the engine's reading,
    208 utilization                 f64  0-1                      | refreshed at least
    216 memory_used_bytes           u64  bytes                    | every 100 ms
    224 sm_occupancy                f64  0-1                      |
    232 tensor_activity             f64  0-1                      |
    240 dram_bandwidth_utilization  f64  0-1                      |
    248 clocks_event_reasons        u64  NVML bitmask (gpu.CLOCKS_EVENT_REASONS)  /

Readings are never torn: the writer makes `seq` odd, writes the reading, then makes `seq` even;
a reader retries while `seq` is odd or changed during its copy. `seq` and the requested limit are
each one aligned 8-byte store, atomic on x86-64 and arm64; the protocol relies on stores becoming
visible in program order (x86-64). A writer replaces the file (write a temporary file, then rename),
never rewrites it in place, so readers notice a restarted engine by the file's new identity.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import mmap
import os
import struct
import sys
import time
from dataclasses import dataclass
from typing import Callable

from jouletrace.exporter.gpu.device import CLOCKS_EVENT_REASONS, GPUDevice, GPUError, GPUStatus, Selection

log = logging.getLogger(__name__)

if sys.byteorder != "little":  # `seq` and the requested limit are accessed in native order
    raise ImportError("the GPU device file needs a little-endian host")

MAGIC = b"JTGPUDEV"
VERSION = 1
HEADER = struct.Struct("<8sIII12x")
SLOT_SIZE = 256
METADATA = struct.Struct("<64s64sQdd")
REQUESTED_OFFSET = 152
SEQ_OFFSET = 160
READING = struct.Struct("<6dQ3dQ")
READING_OFFSET = 168
BUSY_TIMEOUT_S = 0.05  # a reader gives up after this long without a consistent copy
STALE_S = 5.0  # FileGPU: a reading older than this is stale (the engine refreshes every 100 ms)


class DeviceFileError(Exception):
    """The device file is missing, malformed or of another version."""


class DeviceBusy(DeviceFileError):
    """No consistent reading could be copied within BUSY_TIMEOUT_S (the writer stalled mid-write)."""


@dataclass(frozen=True, slots=True)
class SlotSpec:
    """A GPU's fixed description. UUID and name: at most 64 bytes of UTF-8 each."""

    uuid: str
    name: str
    memory_total_bytes: int
    power_limit_min_w: float
    power_limit_max_w: float


@dataclass(frozen=True, slots=True)
class Reading:
    """The engine's reading of one GPU; units as in the module docstring."""

    time: float
    energy_j: float
    power_w: float
    power_limit_w: float
    sm_clock_hz: float = 0.0
    utilization: float = 0.0
    memory_used_bytes: int = 0
    sm_occupancy: float = 0.0
    tensor_activity: float = 0.0
    dram_bandwidth_utilization: float = 0.0
    clocks_event_reasons: int = 0


def _text(value: str, what: str) -> bytes:
    data = value.encode()
    if len(data) > 64:
        raise ValueError(f"{what} {value!r} is longer than 64 bytes")
    return data


class DeviceFile:
    """A mapped device file. `create` (the engine) or `open` (readers); `close` when done."""

    def __init__(self, path: str, fd: int):
        st = os.fstat(fd)
        head = os.pread(fd, HEADER.size, 0)
        if len(head) < HEADER.size:
            raise DeviceFileError(f"{path} is truncated: {st.st_size} bytes, shorter than the header")
        magic, version, count, slot_size = HEADER.unpack(head)
        if magic != MAGIC:
            raise DeviceFileError(f"{path} is not a GPU device file (magic {magic!r})")
        if version != VERSION or slot_size != SLOT_SIZE:
            raise DeviceFileError(f"{path} is a version {version} device file with {slot_size}-byte slots; "
                                  f"this reader knows version {VERSION} with {SLOT_SIZE}-byte slots")
        size = HEADER.size + count * SLOT_SIZE
        if st.st_size < size:
            raise DeviceFileError(f"{path} is truncated: {st.st_size} bytes, its {count} slots need {size}")
        self.path = path
        self._identity = (st.st_dev, st.st_ino, st.st_size)
        self._map = mmap.mmap(fd, size)
        self._words = memoryview(self._map).cast("Q")
        self._floats = memoryview(self._map).cast("d")
        self.slots = tuple(self._slot_spec(i) for i in range(count))

    @classmethod
    def create(cls, path: str, gpus: list[SlotSpec]) -> "DeviceFile":
        """Write a new file with one slot per GPU (requested limit: the maximum; no reading yet)
        and put it in place of any file at `path` in one rename."""
        body = bytearray(HEADER.pack(MAGIC, VERSION, len(gpus), SLOT_SIZE) + bytes(len(gpus) * SLOT_SIZE))
        for i, gpu in enumerate(gpus):
            if not 0 < gpu.power_limit_min_w <= gpu.power_limit_max_w:
                raise ValueError(f"GPU {i}: power limit range {gpu.power_limit_min_w}-{gpu.power_limit_max_w} W")
            start = HEADER.size + i * SLOT_SIZE
            METADATA.pack_into(body, start, _text(gpu.uuid, "uuid"), _text(gpu.name, "name"),
                               gpu.memory_total_bytes, gpu.power_limit_min_w, gpu.power_limit_max_w)
            struct.pack_into("<d", body, start + REQUESTED_OFFSET, gpu.power_limit_max_w)
        temporary = f"{path}.{os.getpid()}.tmp"
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            os.write(fd, body)
            os.replace(temporary, path)
            return cls(path, fd)
        finally:
            os.close(fd)

    @classmethod
    def open(cls, path: str) -> "DeviceFile":
        """Map an existing file for reading (and for requesting power limits)."""
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            raise DeviceFileError(f"no device file at {path}") from None
        except OSError as exc:
            raise DeviceFileError(f"cannot open device file {path}: {exc.strerror}") from None
        try:
            return cls(path, fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        self._words.release()
        self._floats.release()
        self._map.close()

    def __enter__(self) -> "DeviceFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def count(self) -> int:
        return len(self.slots)

    def replaced(self) -> bool:
        """Whether `path` no longer names this file as mapped: deleted, recreated or resized."""
        try:
            st = os.stat(self.path)
        except OSError:
            return True
        return (st.st_dev, st.st_ino, st.st_size) != self._identity

    # -- slots --------------------------------------------------------------------------------
    def _offset(self, index: int) -> int:
        if not 0 <= index < self.count:
            raise IndexError(f"slot {index} of a {self.count}-slot device file")
        return HEADER.size + index * SLOT_SIZE

    def _slot_spec(self, index: int) -> SlotSpec:
        uuid, name, memory, lo, hi = METADATA.unpack_from(self._map, HEADER.size + index * SLOT_SIZE)
        return SlotSpec(uuid.rstrip(b"\0").decode(errors="replace"), name.rstrip(b"\0").decode(errors="replace"),
                        memory, lo, hi)

    def _word(self, index: int, offset: int) -> int:
        """Index, in 8-byte words, of the field at `offset` in slot `index`."""
        return (self._offset(index) + offset) // 8

    def write(self, index: int, reading: Reading) -> None:
        """Publish `index`'s reading (the engine only: one writer per file)."""
        values = dataclasses.astuple(reading)
        start = self._offset(index)
        seq = (start + SEQ_OFFSET) // 8
        odd = self._words[seq] | 1
        self._words[seq] = odd
        READING.pack_into(self._map, start + READING_OFFSET, *values)
        self._words[seq] = odd + 1

    def read(self, index: int) -> Reading:
        """`index`'s latest reading, never torn; DeviceBusy if the writer holds it too long."""
        start = self._offset(index)
        seq = (start + SEQ_OFFSET) // 8
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            before = self._words[seq]
            if not before & 1:
                values = READING.unpack_from(self._map, start + READING_OFFSET)
                if self._words[seq] == before:
                    return Reading(*values)
            if time.monotonic() > deadline:
                raise DeviceBusy(f"{self.path}: slot {index} stayed mid-write for {BUSY_TIMEOUT_S * 1000:.0f} ms")
            os.sched_yield()  # let a preempted writer finish

    def request_power_limit(self, index: int, watts: float) -> None:
        """Ask the engine to enforce `watts` on GPU `index` from its next step."""
        word = self._word(index, REQUESTED_OFFSET)
        spec = self.slots[index]
        if not spec.power_limit_min_w <= watts <= spec.power_limit_max_w:
            raise ValueError(f"power limit {watts} W is outside GPU {index}'s range "
                             f"{spec.power_limit_min_w:g}-{spec.power_limit_max_w:g} W")
        self._floats[word] = float(watts)

    def requested_power_limit(self, index: int) -> float:
        """The power limit (W) last requested for GPU `index`."""
        return self._floats[self._word(index, REQUESTED_OFFSET)]


class FileGPU(GPUDevice):
    """Slot `index` of a device file, as the exporter's simulated GPU.

    Reads raise GPUError "gpu_lost" while the file is missing, was replaced (a restarted engine) or
    holds a corrupt reading, and "stale" when the reading is older than `stale_s`; `reopen()` maps
    the file now at `path`. Until the file is first opened, `uuid` is a placeholder. A power limit
    set here is requested in the file; the engine enforces it from its next step.
    """

    backend = "sim"

    def __init__(self, path: str, index: int, *, stale_s: float = STALE_S, clock: Callable[[], float] = time.time):
        self.path = path
        self.index = index
        self.uuid = f"sim-slot-{index}"
        self.name = "Simulated GPU (device file)"
        self.memory_total_bytes: int | None = None
        self._stale_s = stale_s
        self._clock = clock
        self._file: DeviceFile | None = None
        try:
            self.reopen()
        except GPUError:
            pass  # the engine has not created the file yet: reads report the GPU lost until it does

    def reopen(self) -> None:
        try:
            file = DeviceFile.open(self.path)
        except DeviceFileError as exc:
            raise GPUError("reopen", "gpu_lost", str(exc)) from None
        if self.index >= file.count:
            file.close()
            raise GPUError("reopen", "gpu_lost", f"{self.path} has {file.count} slots, none with index {self.index}")
        if self._file is not None:
            self._file.close()
        self._file = file
        spec = file.slots[self.index]
        if spec.uuid != self.uuid:
            log.info("GPU %d is %s (%s) in %s", self.index, spec.uuid, spec.name, self.path)
        self.uuid, self.name, self.memory_total_bytes = spec.uuid, spec.name, spec.memory_total_bytes

    def _reading(self, call: str) -> Reading:
        try:
            reading = self._mapped(call).read(self.index)
        except DeviceBusy as exc:
            raise GPUError(call, "busy", str(exc)) from None
        if not all(map(math.isfinite, (reading.time, reading.energy_j, reading.power_w))):
            raise GPUError(call, "gpu_lost", f"corrupt reading in {self.path}")
        age = self._clock() - reading.time
        if age > self._stale_s:
            raise GPUError(call, "stale", f"the last reading is {age:.1f} s old")
        return reading

    def _mapped(self, call: str) -> DeviceFile:
        if self._file is None or self._file.replaced():
            raise GPUError(call, "gpu_lost", f"device file {self.path} is missing or was replaced")
        return self._file

    def power_limit_constraints_w(self) -> tuple[float, float]:
        spec = self._mapped("power_limit_constraints").slots[self.index]
        return spec.power_limit_min_w, spec.power_limit_max_w

    def power_limit_w(self) -> float:
        """The limit requested in the file: what the engine enforces from its next step, or the
        next engine from its first."""
        return self._mapped("power_limit").requested_power_limit(self.index)

    def set_power_limit_w(self, watts: float) -> None:
        try:
            self._mapped("set_power_limit").request_power_limit(self.index, watts)
        except ValueError as exc:
            raise GPUError("set_power_limit", "invalid_argument", str(exc)) from None

    def energy_mj(self) -> tuple[int, float | None]:
        reading = self._reading("energy")
        return int(reading.energy_j * 1000), reading.time

    def power_w(self) -> tuple[float, float | None]:
        reading = self._reading("power")
        return reading.power_w, reading.time

    def status(self) -> GPUStatus:
        r = self._reading("status")
        return GPUStatus(
            power_limit_w=r.power_limit_w,
            sm_clock_hz=r.sm_clock_hz,
            utilization=r.utilization,
            memory_used_bytes=r.memory_used_bytes,
            memory_total_bytes=self.memory_total_bytes,
            clocks_event_reasons={name: bool(r.clocks_event_reasons & bit)
                                  for bit, name in CLOCKS_EVENT_REASONS.items()},
            sm_occupancy=r.sm_occupancy,
            tensor_activity=r.tensor_activity,
            dram_bandwidth_utilization=r.dram_bandwidth_utilization,
        )


def open_devices(path: str, selection: Selection, *, count: int = 1, **kwargs) -> list[FileGPU]:
    """Slots 0..count-1 of the device file at `path`, narrowed by `selection`; the file may appear later."""
    try:
        with DeviceFile.open(path) as file:
            if file.count != count:
                log.warning("%s has %d GPU slots; reading slots 0-%d (--sim-gpus %d)", path, file.count, count - 1, count)
    except DeviceFileError as exc:
        log.warning("%s: its GPUs read as lost until the engine writes it", exc)
    devices = [FileGPU(path, i, **kwargs) for i in range(count)]
    chosen = selection.choose([(d.index, d.uuid) for d in devices])
    return [d for d in devices if d.index in chosen]
