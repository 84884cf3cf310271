"""The dev cluster's certificates, keys and kubeconfigs, made fresh for every `lorasweep dev up`.

One CA signs everything: the API server's and etcd's serving certificates, and a client certificate
per identity (admin in ``system:masters``, the controller manager, the scheduler, the node in
``system:nodes``). EC P-256 keys keep generation to milliseconds. The service-account signing key is
separate from the CA, as in a real cluster.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NODE_NAME = "lorasweep-dev-node"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
# The first address of the service range: the `kubernetes` Service, which the serving cert must name.
KUBERNETES_SERVICE_IP = "10.0.0.1"
API_SERVER_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
CLUSTER_NAME = "lorasweep-dev"

# Client identities: file stem -> (common name, organizations).
CLIENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "admin": ("lorasweep-admin", ("system:masters",)),
    "controller-manager": ("system:kube-controller-manager", ()),
    "scheduler": ("system:kube-scheduler", ()),
    "node": (f"system:node:{NODE_NAME}", ("system:nodes",)),
    "apiserver-etcd-client": ("kube-apiserver-etcd-client", ()),
    "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", ()),
}


@dataclass(frozen=True)
class Pki:
    """Paths of the files `generate` writes; the layout is fixed relative to ``folder``."""

    folder: Path

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca.key"

    @property
    def sa_key(self) -> Path:
        return self.folder / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.folder / "sa.pub"

    def cert(self, stem: str) -> Path:
        return self.folder / f"{stem}.crt"

    def key(self, stem: str) -> Path:
        return self.folder / f"{stem}.key"


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str, organizations: tuple[str, ...] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    return x509.Name([*attributes, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    # Back-dated a little so that a clock a few seconds behind does not reject a fresh certificate.
    return builder.not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(
        now + datetime.timedelta(days=365)
    )


def _key_usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def make_ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    name = _name("lorasweep-dev-ca")
    builder = (
        _validity(x509.CertificateBuilder())
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return builder.sign(key, hashes.SHA256()), key


def make_leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    organizations: tuple[str, ...] = (),
    *,
    server: bool = False,
    client: bool = False,
    dns_names: tuple[str, ...] = (),
    ip_addresses: tuple[str, ...] = (),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    )
    builder = (
        _validity(x509.CertificateBuilder())
        .subject_name(_name(common_name, organizations))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if dns_names or ip_addresses:
        alt_names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
        alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _write(path: Path, data: bytes, private: bool = False) -> None:
    # Created with the final mode, so a key is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def generate(folder: Path) -> Pki:
    """Write a fresh CA, serving and client certificates, and the service-account key pair."""
    folder.mkdir(parents=True, exist_ok=True)
    pki = Pki(folder)
    ca_cert, ca_key = make_ca()
    _write(pki.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write(pki.ca_key, _key_pem(ca_key), private=True)

    servers = {
        "apiserver": (API_SERVER_DNS_NAMES, ("127.0.0.1", KUBERNETES_SERVICE_IP)),
        "etcd-server": (("localhost",), ("127.0.0.1",)),
        "node-serving": (("localhost", NODE_NAME), ("127.0.0.1",)),
    }
    for stem, (dns_names, ips) in servers.items():
        cert, key = make_leaf(ca_cert, ca_key, stem, server=True, dns_names=dns_names, ip_addresses=ips)
        _write(pki.cert(stem), cert.public_bytes(serialization.Encoding.PEM))
        _write(pki.key(stem), _key_pem(key), private=True)
    for stem, (common_name, organizations) in CLIENTS.items():
        cert, key = make_leaf(ca_cert, ca_key, common_name, organizations, client=True)
        _write(pki.cert(stem), cert.public_bytes(serialization.Encoding.PEM))
        _write(pki.key(stem), _key_pem(key), private=True)

    sa_key = _new_key()
    _write(pki.sa_key, _key_pem(sa_key), private=True)
    sa_pub = sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write(pki.sa_pub, sa_pub)
    return pki


def kubeconfig(
    server: str, ca_pem: bytes, user: str, *, cert_pem: bytes = b"", key_pem: bytes = b"", token: str = ""
) -> str:
    """A self-contained kubeconfig (credentials embedded, so the file can be copied elsewhere)."""
    credentials: dict[str, str] = {}
    if cert_pem:
        credentials["client-certificate-data"] = base64.b64encode(cert_pem).decode()
        credentials["client-key-data"] = base64.b64encode(key_pem).decode()
    if token:
        credentials["token"] = token
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CLUSTER_NAME,
                "cluster": {"server": server, "certificate-authority-data": base64.b64encode(ca_pem).decode()},
            }
        ],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": CLUSTER_NAME, "context": {"cluster": CLUSTER_NAME, "user": user}}],
        "current-context": CLUSTER_NAME,
    }
    return yaml.safe_dump(document, sort_keys=False)


def write_client_kubeconfig(pki: Pki, stem: str, server: str, path: Path) -> Path:
    """The kubeconfig of one of the client identities in `CLIENTS`."""
    text = kubeconfig(
        server,
        pki.ca_cert.read_bytes(),
        CLIENTS[stem][0],
        cert_pem=pki.cert(stem).read_bytes(),
        key_pem=pki.key(stem).read_bytes(),
    )
    _write(path, text.encode(), private=True)
    return path


def write_token_kubeconfig(server: str, ca_pem: bytes, user: str, token: str, path: Path) -> Path:
    """A kubeconfig holding a bearer token (a ServiceAccount's, from the TokenRequest API)."""
    _write(path, kubeconfig(server, ca_pem, user, token=token).encode(), private=True)
    return path
