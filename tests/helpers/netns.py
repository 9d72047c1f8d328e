"""Two "machines" on one box for tests: two network namespaces joined by a veth pair with a /30 of their own, so a
server in one is reached from the other over a real network interface and the traffic never leaves the pair (root;
``ip`` from iproute2). Also a self-signed certificate for that address (TLS across the pair)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Hosts:
    server_ns: str
    client_ns: str
    server_ip: str
    client_ip: str

    def argv(self, namespace: str, command: list[str]) -> list[str]:
        return ["ip", "netns", "exec", namespace, *command]


def why_not() -> str | None:
    """Why namespaces cannot be made here (``None`` when they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not shutil.which("ip"):
        return "no `ip` (iproute2) here"
    probe = f"eqa-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@contextmanager
def two_hosts():
    """Namespaces ``eqa-srv-<pid>`` and ``eqa-cli-<pid>``, a veth pair between them, 10.231.X.1 and .2/30 (X from the
    pid, so parallel test runs do not collide), loopback up in both; removed on exit."""
    tag = os.getpid() % 100000
    subnet = ipaddress.ip_network(f"10.231.{tag // 64 % 256}.{tag % 64 * 4}/30")
    server_ip, client_ip = (str(a) for a in subnet.hosts())
    hosts = Hosts(f"eqa-srv-{tag}", f"eqa-cli-{tag}", server_ip, client_ip)
    veth = (f"eqs{tag}", f"eqc{tag}")
    try:
        for ns in (hosts.server_ns, hosts.client_ns):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", veth[0], "type", "veth", "peer", "name", veth[1])
        for name, ns, address in ((veth[0], hosts.server_ns, server_ip), (veth[1], hosts.client_ns, client_ip)):
            _ip("link", "set", name, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{address}/30", "dev", name)
            _ip("-n", ns, "link", "set", name, "up")
        yield hosts
    finally:
        for ns in (hosts.server_ns, hosts.client_ns):  # deleting a namespace removes its end of the pair
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def self_signed_certificate(folder: Path, address: str) -> tuple[Path, Path]:
    """A certificate for ``address`` (as an IP subject alternative name) and its key, PEM, key mode 0600."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "server.crt", folder / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path
