"""strongSwan configuration for a route-based site-to-site VPN (AWS style), one charon per tunnel.

Why one charon per tunnel. This kernel has no ESP/XFRM, so charon runs with `kernel-libipsec`:
ESP in user space behind a TUN device. libipsec keeps every outbound packet read from that
device on one list of policies and picks the first whose traffic selectors match the packet,
ordered by selector size and then by age (strongSwan 5.9.8, src/libipsec/ipsec_policy_mgr.c,
`add_policy`/`find_by_packet`); marks are stored but never compared with a packet, and there are
no XFRM interface ids (`if_id_in/out`, kernel-netlink only). So two tunnels with AWS's
selectors (0.0.0.0/0 both ways, route-based) in one charon cannot be told apart: whichever
CHILD_SA came last would carry everything, whatever BGP chose. A charon with one tunnel owns
one TUN device (`ipsec%d`, kernel_libipsec_router.c: the first is `ipsec0`, seed 001's
device, the second `ipsec1`), and then the kernel's routing table — filled by BGP — picks the
tunnel, exactly as with AWS's virtual tunnel interfaces.

What running several charons in one namespace takes, all rendered here:
- ports: only one socket can hold UDP 500/4500. Tunnel i's charon listens on 500+i/4500+i;
  `port_map` rewrites them to 500/4500 on the wire (SNAT of its packets to the peer, DNAT of
  the peer's packets), so the internet sees the standard ports for every tunnel;
- routes: kernel-libipsec installs a route for every outbound policy whatever
  `charon.install_routes` says (kernel_libipsec_ipsec.c, `install_route`) — with 0.0.0.0/0
  selectors a default route via the TUN device in `charon.routing_table`. Each charon gets a
  table of its own, and the `ip rule` charon adds for it only matches `INERT_MARK`, which no
  packet carries: BGP, not libipsec, routes;
- the pid file is compiled in (`/var/run/charon.pid`); the driver gives each charon a private
  /run (a bind mount in its own mount namespace), so `charon.pid` and `charon.vici` live in the
  caller's folder.

AWS's tunnel options (EC2 API `VpnTunnelOptionsSpecification`): IKEv2, AES256-GCM-16, DH group 20
(ecp384) are among the permitted values; the customer gateway initiates, and a dead peer is
restarted (`DPDTimeoutAction` restart). AWS's own DPD timeout is at least 30 s; the lab's is
seconds, so a cut tunnel is also cleared on the IPsec side quickly (BGP notices it first).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import PurePosixPath

from crossmesh import nft

IKE_PORT = 500
NATT_PORT = 4500
ANY = IPv4Network("0.0.0.0/0")
AWS_IKE_PROPOSALS = ("aes256gcm16-prfsha384-ecp384",)
"""Phase 1: AES256-GCM-16, PRF SHA2-384, DH group 20."""
AWS_ESP_PROPOSALS = ("aes256gcm16-ecp384",)
"""Phase 2: AES256-GCM-16 with PFS group 20."""
ROUTING_TABLE_BASE = 220
"""charon's default table; tunnel i's charon uses 220+i (see the module docstring)."""
INERT_MARK = 0x2D0C
"""The firewall mark charon's routing rule asks for: nothing sets it, so the rule never matches."""
CHARON_PLUGINS = (
    "random nonce openssl aes gcm sha1 sha2 hmac kdf pem pkcs1 x509 pubkey "
    "kernel-libipsec kernel-netlink socket-default vici"
)
"""kernel-libipsec before kernel-netlink: the first IPsec backend loaded is the one used, and
kernel-netlink stays for addresses and routes. `openssl` gives AES-GCM and the ECP groups."""
SWANCTL_PLUGINS = "random nonce openssl pem pkcs1 x509 pubkey"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")


@dataclass(frozen=True, slots=True)
class Liveness:
    """How fast a silent peer is declared dead: DPD every `dpd_delay_s` of silence, then
    `retransmit_tries` retransmissions `retransmit_timeout_s` apart (charon's base 1.0: no
    exponential back-off). The defaults notice a cut tunnel in about 2.5 s."""

    dpd_delay_s: int = 1
    retransmit_timeout_s: float = 0.5
    retransmit_tries: int = 2


@dataclass(frozen=True, slots=True)
class TunnelSpec:
    """One IPsec tunnel as seen from one end (the customer gateway or an AWS endpoint).

    `inside_local` is this end's inside address with the tunnel's /30 (AWS gives itself the
    first host, the customer gateway the second); `inside_remote` is the peer's. The traffic
    selectors default to AWS's route-based 0.0.0.0/0 both ways. `initiator`: the customer
    gateway starts the tunnel and restarts it when the peer is found dead; the AWS end answers
    and clears."""

    name: str
    local_outside: IPv4Address
    remote_outside: IPv4Address
    inside_local: IPv4Interface
    inside_remote: IPv4Address
    psk: str
    initiator: bool
    ike_proposals: tuple[str, ...] = AWS_IKE_PROPOSALS
    esp_proposals: tuple[str, ...] = AWS_ESP_PROPOSALS
    local_ts: tuple[IPv4Network, ...] = (ANY,)
    remote_ts: tuple[IPv4Network, ...] = (ANY,)
    ike_lifetime_s: int = 28800
    child_lifetime_s: int = 3600


@dataclass(frozen=True, slots=True)
class CharonInstance:
    """The charon that carries tunnel number `index` (0-based) of a gateway, and its files.

    Everything it writes or listens on is under `folder`: `strongswan.conf`, `swanctl.conf`,
    `charon.log`, and `run/` (its /run: `charon.pid`, `charon.vici`)."""

    index: int
    folder: PurePosixPath
    liveness: Liveness = field(default_factory=Liveness)

    @property
    def ike_port(self) -> int:
        return IKE_PORT + self.index

    @property
    def natt_port(self) -> int:
        return NATT_PORT + self.index

    @property
    def tun_device(self) -> str:
        """The TUN device libipsec creates: `ipsec%d` numbered in start order, so the driver
        starts the charons one after the other and checks the name."""
        return f"ipsec{self.index}"

    @property
    def routing_table(self) -> int:
        return ROUTING_TABLE_BASE + self.index

    @property
    def run_dir(self) -> PurePosixPath:
        return self.folder / "run"

    @property
    def vici_socket(self) -> PurePosixPath:
        return self.run_dir / "charon.vici"

    @property
    def config(self) -> PurePosixPath:
        return self.folder / "strongswan.conf"

    @property
    def swanctl_config(self) -> PurePosixPath:
        return self.folder / "swanctl.conf"

    @property
    def log(self) -> PurePosixPath:
        return self.folder / "charon.log"


def _value(v: object) -> str:
    """A strongSwan settings value: bare when it is a plain word, else quoted."""
    text = str(v)
    if re.fullmatch(r"[A-Za-z0-9_.:/%@,+-]+", text):
        return text
    if "\n" in text:
        raise ValueError(f"a strongSwan setting cannot span lines: {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def settings(tree: Mapping[str, object], indent: int = 0) -> str:
    """strongSwan's settings syntax (strongswan.conf, swanctl.conf) from nested mappings, in
    the mappings' order: sections are `name { ... }`, values `key = value`."""
    pad = "    " * indent
    out = []
    for key, value in tree.items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", key):
            raise ValueError(f"not a strongSwan settings key: {key!r}")
        if isinstance(value, Mapping):
            out.append(f"{pad}{key} {{\n{settings(value, indent + 1)}{pad}}}\n")
        else:
            out.append(f"{pad}{key} = {_value(value)}\n")
    return "".join(out)


def strongswan_conf(instance: CharonInstance) -> str:
    """strongswan.conf for one charon with kernel-libipsec (and for swanctl talking to it)."""
    live = instance.liveness
    charon = {
        "port": instance.ike_port,
        "port_nat_t": instance.natt_port,
        "install_virtual_ip": "no",
        "routing_table": instance.routing_table,
        "routing_table_prio": instance.routing_table,
        "retransmit_timeout": live.retransmit_timeout_s,
        "retransmit_tries": live.retransmit_tries,
        "retransmit_base": 1.0,
        # A cut tunnel's retries leave half-open IKE_SAs at the responder (IKE_SA_INIT on port 500
        # passes, IKE_AUTH on 4500 does not); past the default threshold of 10 it demands cookies,
        # and an initiator gives up for good after 5 cookie rounds (measured: the tunnel never came
        # back). Half-open SAs expire in 5 s here, so a handful at most exist; cookies still answer a flood.
        "half_open_timeout": 5,
        "cookie_threshold": 100,
        "load_modular": "no",
        "load": CHARON_PLUGINS,
        "filelog": {
            "main": {
                "path": str(instance.log),
                "time_format": "%b %e %T",
                "default": 1,
                "flush_line": "yes",
            }
        },
        "syslog": {"daemon": {"default": -1}},
        "plugins": {
            "vici": {"socket": f"unix://{instance.vici_socket}"},
            "kernel-netlink": {"fwmark": f"{INERT_MARK:#x}"},
            "kernel-libipsec": {"allow_peer_ts": "no"},
        },
    }
    return settings({"charon": charon, "swanctl": {"load": SWANCTL_PLUGINS}})


def swanctl_conf(tunnel: TunnelSpec, liveness: Liveness | None = None) -> str:
    """swanctl.conf: the tunnel's IKEv2 connection, its one CHILD_SA and its pre-shared key."""
    if not _NAME.match(tunnel.name):
        raise ValueError(f"tunnel name {tunnel.name!r}: letters, digits, - and _ only, 32 at most")
    if tunnel.inside_local.network.prefixlen != 30 or tunnel.inside_remote not in tunnel.inside_local.network:
        raise ValueError(f"{tunnel.name}: inside addresses must share one /30 ({tunnel.inside_local})")
    live = liveness or Liveness()
    child = {
        "local_ts": ",".join(str(n) for n in tunnel.local_ts),
        "remote_ts": ",".join(str(n) for n in tunnel.remote_ts),
        "esp_proposals": ",".join(tunnel.esp_proposals),
        "rekey_time": f"{tunnel.child_lifetime_s}s",
        "dpd_action": "restart" if tunnel.initiator else "clear",
        "start_action": "start" if tunnel.initiator else "none",
        "close_action": "start" if tunnel.initiator else "none",
    }
    connection = {
        "version": 2,
        "local_addrs": str(tunnel.local_outside),
        "remote_addrs": str(tunnel.remote_outside),
        "proposals": ",".join(tunnel.ike_proposals),
        "dpd_delay": f"{live.dpd_delay_s}s",
        "rekey_time": f"{tunnel.ike_lifetime_s}s",
        "keyingtries": 0,  # 0: keep trying, a healed tunnel comes back by itself
        "unique": "replace",
        "local": {"auth": "psk", "id": str(tunnel.local_outside)},
        "remote": {"auth": "psk", "id": str(tunnel.remote_outside)},
        "children": {tunnel.name: child},
    }
    secret = {
        "id-local": str(tunnel.local_outside),
        "id-remote": str(tunnel.remote_outside),
        "secret": tunnel.psk,
    }
    return settings({"connections": {tunnel.name: connection}, "secrets": {f"ike-{tunnel.name}": secret}})


def port_map(tunnels: Sequence[TunnelSpec], table: str = "cm_vpn") -> nft.Table | None:
    """NAT that puts tunnel i's charon (ports 500+i/4500+i) on 500/4500 on the wire, for i ≥ 1.

    Keyed by both outside addresses, so tunnel 0's packets — same local address, or same peer
    on the AWS side where one customer gateway is the peer of both endpoints — are untouched.
    None when there is one tunnel."""
    F = nft.Field
    pre: list[nft.Rule] = []
    post: list[nft.Rule] = []
    for index, t in enumerate(tunnels):
        if index == 0:
            continue
        for wire, own in ((IKE_PORT, IKE_PORT + index), (NATT_PORT, NATT_PORT + index)):
            # (chain, from, to, port matched, NAT, port written, why)
            for rules, src, dst, port, kind, to_port, why in (
                (pre, t.remote_outside, t.local_outside, wire, nft.NatKind.DNAT, own, "to this tunnel's charon"),
                (post, t.local_outside, t.remote_outside, own, nft.NatKind.SNAT, wire, "on the wire"),
            ):
                matches = (nft.Match(F.IP_SADDR, src), nft.Match(F.IP_DADDR, dst))
                field_ = F.UDP_DPORT if kind is nft.NatKind.DNAT else F.UDP_SPORT
                nat = nft.Nat(kind, t.local_outside, to_port)
                rules.append(nft.Rule((*matches, nft.Match(field_, port), nat), f"{t.name}: UDP {port} {why}"))
    if not pre:
        return None
    return nft.Table(
        table,
        (
            nft.Chain("wire_in", tuple(pre), nft.Base(nft.ChainType.NAT, nft.Hook.PREROUTING, nft.Priority.DSTNAT)),
            nft.Chain("wire_out", tuple(post), nft.Base(nft.ChainType.NAT, nft.Hook.POSTROUTING, nft.Priority.SRCNAT)),
        ),
        comment="one charon per IPsec tunnel, all on UDP 500/4500 on the wire",
    )
