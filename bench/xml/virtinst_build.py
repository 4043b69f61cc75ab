"""virt-manager's object model building the reference domain (run with /usr/bin/python3).

Debian's ``virtinst`` package installs the library under /usr/share/virt-manager
for the system Python only, hence a separate process. It times its own loop
and prints one JSON line: {"median_us": ..., "runs": ..., "devices": ...}.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

sys.path.insert(0, "/usr/share/virt-manager")

from virtinst import (
    DeviceChannel,
    DeviceConsole,
    DeviceController,
    DeviceDisk,
    DeviceGraphics,
    DeviceInterface,
    DeviceMemballoon,
    DeviceRng,
    DeviceSerial,
    DeviceTpm,
    DeviceVideo,
    DeviceWatchdog,
    Guest,
    VirtinstConnection,
)

PH = "/kestrel-placeholder"


def build(conn) -> str:
    """The same domain as tests/lib/golden/cases.yaml's 'everything' case, device for device."""
    guest = Guest(conn)
    guest.name = "everything"
    guest.uuid = "2f0b5d7e-0000-5000-8000-000000000001"
    guest.description = "the reference VM of about twenty devices"
    guest.type = "kvm"
    guest.memory = 4 * 1024 * 1024
    guest.currentMemory = 4 * 1024 * 1024
    guest.maxMemory = 16 * 1024 * 1024
    guest.maxMemorySlots = 16
    guest.vcpus = 8
    guest.vcpu_current = 4
    guest.os.os_type = "hvm"
    guest.os.arch = "x86_64"
    guest.os.machine = "q35"
    guest.os.firmware = "efi"
    guest.os.nvram = f"{PH}/nvram/x.fd"
    guest.features.acpi = True
    guest.features.apic = True
    guest.features.smm = True
    guest.cpu.mode = "host-model"
    guest.cpu.set_topology_defaults(8)
    guest.cpu.topology.sockets, guest.cpu.topology.cores, guest.cpu.topology.threads = 4, 2, 1
    for index, cpus in enumerate(("0-3", "4-7")):
        cell = guest.cpu.cells.add_new()
        cell.id, cell.cpus, cell.memory = index, cpus, 2 * 1024 * 1024
    guest.memoryBacking.hugepages = True
    guest.clock.offset = "utc"
    guest.on_poweroff, guest.on_reboot, guest.on_crash = "destroy", "restart", "destroy"

    ctrl = DeviceController(conn)
    ctrl.type, ctrl.model, ctrl.index = "scsi", "virtio-scsi", 0
    guest.add_device(ctrl)
    for name, bus, target in (("root", "virtio", "vda"), ("data1", "scsi", "sda"),
                              ("data2", "scsi", "sdb"), ("logs", "virtio", "vdb")):
        disk = DeviceDisk(conn)
        disk.set_source_path(f"{PH}/storage/data/{name}/vol")
        disk.driver_name, disk.driver_type = "qemu", "qcow2"
        disk.bus, disk.target = bus, target
        disk.serial = name
        disk.alias.name = f"ua-{name}"
        guest.add_device(disk)
    lun = DeviceDisk(conn)
    lun.type = "block"
    lun.set_source_path("/dev/mapper/shared0")
    lun.bus, lun.target, lun.shareable = "scsi", "sdc", True
    guest.add_device(lun)
    for name, path in (("cdrom", f"{PH}/storage/isos/tools.iso"), ("payload", f"{PH}/payload/x.iso")):
        cd = DeviceDisk(conn)
        cd.device = "cdrom"
        cd.set_source_path(path)
        cd.bus, cd.target, cd.read_only = "sata", "sdd" if name == "cdrom" else "sde", True
        cd.alias.name = f"ua-{name}"
        guest.add_device(cd)
    for index, bridge in enumerate(("kestrelmgmt", "ovsbr0", "backend", "backend")):
        nic = DeviceInterface(conn)
        nic.type, nic.source = "bridge", bridge
        nic.macaddr = f"56:6f:4b:00:00:0{index}"
        nic.model = "virtio"
        nic.alias.name = f"ua-nic{index}"
        guest.add_device(nic)
    graphics = DeviceGraphics(conn)
    graphics.type, graphics.listen, graphics.passwd = "vnc", "127.0.0.1", "secret"
    guest.add_device(graphics)
    video = DeviceVideo(conn)
    video.model = "virtio"
    guest.add_device(video)
    serial = DeviceSerial(conn)
    serial.type = "pty"
    serial.source.log_file = f"{PH}/console/x.log"
    guest.add_device(serial)
    console = DeviceConsole(conn)
    console.type, console.target_type = "pty", "serial"
    guest.add_device(console)
    channel = DeviceChannel(conn)
    channel.type, channel.source.path = "unix", f"{PH}/channels/x.org.qemu.guest_agent.0"
    channel.target_type, channel.target_name = "virtio", "org.qemu.guest_agent.0"
    guest.add_device(channel)
    rng = DeviceRng(conn)
    rng.backend_model, rng.device = "random", "/dev/urandom"
    guest.add_device(rng)
    watchdog = DeviceWatchdog(conn)
    watchdog.model, watchdog.action = "i6300esb", "reset"
    guest.add_device(watchdog)
    tpm = DeviceTpm(conn)
    tpm.model, tpm.type, tpm.version = "tpm-crb", "emulator", "2.0"
    guest.add_device(tpm)
    balloon = DeviceMemballoon(conn)
    balloon.model = "virtio"
    guest.add_device(balloon)
    return guest.get_xml()


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    conn = VirtinstConnection("test:///default")
    conn.open(None, None)
    xml = build(conn)
    times = []
    for _run in range(runs):
        start = time.perf_counter()
        build(conn)
        times.append(time.perf_counter() - start)
    print(json.dumps({"median_us": statistics.median(times) * 1e6, "runs": runs,
                      "devices": xml.count("<disk") + xml.count("<interface") + 12}))


if __name__ == "__main__":
    main()
