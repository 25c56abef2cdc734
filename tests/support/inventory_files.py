"""Large inventory files for tests and benchmarks: racks full of machines, all wired.

Each rack (42U) holds a switch at U42 with one port per machine plus an uplink, a
0U PDU with one outlet per machine, and ``per_rack`` machines at U1 upwards. Every
machine has a PXE NIC on its switch port, a second unwired NIC, an IPMI BMC whose
password comes from ``password_env`` (when given) and one outlet. The BMCs are on
loopback addresses (127.1.R.U, port 1623, where nothing answers), so a daemon that
runs its power sync over them sends nothing off the machine.
"""

from __future__ import annotations


def generate(
    racks: int, per_rack: int, *, password_env: str | None = None, u_offset: int = 0
) -> str:
    """The inventory's YAML; ``u_offset`` moves every machine up that many units."""
    if not 1 <= per_rack + u_offset <= 40:
        raise ValueError("machines take U1-U40 (the switch is at U42)")
    out = ["version: 1", "racks:"]
    names = [f"r{r:03d}" for r in range(1, racks + 1)]
    out += [f"  - {{name: {r}, site: dc1, u_height: 42, power_budget_watts: 20000}}" for r in names]
    out.append("switches:")
    ports = ", ".join(f"swp{p}" for p in range(1, per_rack + 1))
    out += [
        f"  - {{name: {r}-sw1, rack: {r}, u_position: 42, vendor: acme, model: s48, "
        f"ports: [{ports}, {{name: swp48, vlan: 100, description: uplink}}]}}"
        for r in names
    ]
    out.append("pdus:")
    out += [
        f"  - {{name: {r}-pdu1, rack: {r}, u_height: 0, capacity_watts: 22000, "
        f"outlets: {per_rack}}}"
        for r in names
    ]
    out.append("machines:")
    password = f", password_env: {password_env}" if password_env else ""
    n = 0
    for index, r in enumerate(names, start=1):
        for u in range(1, per_rack + 1):
            n += 1
            tail = f"{n >> 16 & 255:02x}:{n >> 8 & 255:02x}:{n & 255:02x}"
            out += [
                f"  - name: {r}-n{u:02d}",
                f"    rack: {r}",
                f"    u_position: {u + u_offset}",
                f"    serial: SN{n:06d}",
                "    vendor: acme",
                "    model: x1",
                "    tags: [ci, bench]",
                "    nics:",
                f'      - {{mac: "52:54:00:{tail}", name: eth0, pxe: true, '
                f"switch_port: {r}-sw1/swp{u}}}",
                f'      - {{mac: "52:55:00:{tail}", name: eth1}}',
                f"    bmc: {{driver: ipmi, address: 127.{1 + index // 256}.{index % 256}.{u}, "
                f"port: 1623, username: admin{password}}}",
                f"    outlets: [{r}-pdu1/{u}]",
            ]
    return "\n".join(out) + "\n"
