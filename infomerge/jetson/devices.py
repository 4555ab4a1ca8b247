"""Memory of the devices the planner knows: Jetson Orin modules and a few desktop/server GPUs.

Each :class:`Device` states where its numbers come from:

- Jetson (CPU and GPU share one LPDDR5 pool): ``visible_mib`` is the RAM total Linux reports, as
  printed by ``tegrastats`` (``RAM used/TOTALMB``) on such a board (published tegrastats output, the
  same lines as in ``tests/fixtures/tegrastats_*.txt``); it is already less than the marketed size
  because firmware carve-outs are taken first. ``reserve_mib`` is what we assume the OS and its
  services keep for themselves on a headless system: 1024 MiB, an assumption, not a measurement
  (a desktop session takes several hundred MiB more: disable it, see ``jetson/README.md``).
- Discrete GPUs: ``visible_mib`` is the nominal memory size (GiB x 1024) and ``reserve_mib`` an
  assumed 512 MiB for the driver and a display; host RAM is separate and not planned here.

``usable_mib = visible_mib - reserve_mib`` is what the plan's total is compared against.
"""

from __future__ import annotations

from dataclasses import dataclass

from infomerge.errors import InfomergeError

MIB = 1024 * 1024


class UnknownDeviceError(InfomergeError, KeyError):
    """A device name that is not in the table; the message lists the choices."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Device:
    """One device's memory.

    Attributes:
        name: table key, e.g. ``orin-nano-8gb``.
        label: product name.
        visible_mib: memory the OS (Jetson) or the driver (discrete GPU) reports, MiB.
        reserve_mib: memory assumed taken by the OS / driver before our process starts, MiB.
        shared: True where CPU and GPU share one memory (Jetson): host-side memory of the process
            (Python, libraries, decoded frames) then counts against the same budget.
        compute_capability: CUDA compute capability, for engine compatibility notes.
        source: where ``visible_mib`` comes from.
    """

    name: str
    label: str
    visible_mib: int
    reserve_mib: int
    shared: bool
    compute_capability: str
    source: str

    @property
    def usable_mib(self) -> int:
        return self.visible_mib - self.reserve_mib

    @property
    def usable_bytes(self) -> int:
        return self.usable_mib * MIB


_JETSON_RESERVE = 1024  # headless L4T: OS, systemd services, nvargus etc. (assumption)
_DGPU_RESERVE = 512  # driver, display (assumption)
_TEGRASTATS = "RAM total printed by tegrastats on this module (published output)"
_NOMINAL = "nominal memory size x 1024 MiB (not read from a board)"

DEVICES: dict[str, Device] = {
    d.name: d
    for d in (
        Device("orin-nano-8gb", "Jetson Orin Nano 8GB", 7620, _JETSON_RESERVE, True, "8.7", _TEGRASTATS),
        Device(
            "orin-nx-8gb",
            "Jetson Orin NX 8GB",
            7620,
            _JETSON_RESERVE,
            True,
            "8.7",
            "assumed equal to Orin Nano 8GB (same 8 GB LPDDR5; not read from an Orin NX 8GB)",
        ),
        Device("orin-nx-16gb", "Jetson Orin NX 16GB", 15388, _JETSON_RESERVE, True, "8.7", _TEGRASTATS),
        Device("agx-orin-32gb", "Jetson AGX Orin 32GB", 30697, _JETSON_RESERVE, True, "8.7", _TEGRASTATS),
        Device("agx-orin-64gb", "Jetson AGX Orin 64GB", 62841, _JETSON_RESERVE, True, "8.7", _TEGRASTATS),
        Device("rtx-4060-8gb", "GeForce RTX 4060 8GB", 8 * 1024, _DGPU_RESERVE, False, "8.9", _NOMINAL),
        Device("rtx-3060-12gb", "GeForce RTX 3060 12GB", 12 * 1024, _DGPU_RESERVE, False, "8.6", _NOMINAL),
        Device("rtx-4070-12gb", "GeForce RTX 4070 12GB", 12 * 1024, _DGPU_RESERVE, False, "8.9", _NOMINAL),
        Device("rtx-4080-16gb", "GeForce RTX 4080 16GB", 16 * 1024, _DGPU_RESERVE, False, "8.9", _NOMINAL),
        Device("rtx-4090", "GeForce RTX 4090 24GB", 24 * 1024, _DGPU_RESERVE, False, "8.9", _NOMINAL),
        Device("rtx-5090", "GeForce RTX 5090 32GB", 32 * 1024, _DGPU_RESERVE, False, "12.0", _NOMINAL),
        Device("h100-80gb", "H100 80GB", 80 * 1024, _DGPU_RESERVE, False, "9.0", _NOMINAL),
    )
}


def get_device(name: str) -> Device:
    """The device called ``name``.

    Raises:
        UnknownDeviceError: ``name`` is not in :data:`DEVICES`; the message lists the choices.
    """
    try:
        return DEVICES[name]
    except KeyError:
        raise UnknownDeviceError(f"unknown device {name!r}; choose one of: {', '.join(DEVICES)}") from None


__all__ = ["DEVICES", "MIB", "Device", "UnknownDeviceError", "get_device"]
