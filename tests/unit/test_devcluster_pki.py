"""The dev cluster's certificates: every one chains to the CA, carries the identity RBAC and the Node
authorizer read, and serves the names clients dial; keys are private to the owner."""

from __future__ import annotations

import base64
import ipaddress
import ssl
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lorasweep_operator.devcluster import pki


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> pki.Pki:
    return pki.generate(tmp_path_factory.mktemp("pki"))


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_every_certificate_is_signed_by_the_ca(generated: pki.Pki) -> None:
    ca = load(generated.ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for stem in ["apiserver", "etcd-server", "node-serving", *pki.CLIENTS]:
        cert = load(generated.cert(stem))
        cert.verify_directly_issued_by(ca)
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


@pytest.mark.parametrize(
    ("stem", "common_name", "organizations"),
    [
        ("admin", "lorasweep-admin", ["system:masters"]),
        ("node", "system:node:lorasweep-dev-node", ["system:nodes"]),
        ("controller-manager", "system:kube-controller-manager", []),
        ("scheduler", "system:kube-scheduler", []),
    ],
)
def test_client_identities(generated: pki.Pki, stem: str, common_name: str, organizations: list[str]) -> None:
    cert = load(generated.cert(stem))
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == [common_name]
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == organizations
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_api_server_certificate_names_every_address_clients_use(generated: pki.Pki) -> None:
    names = load(generated.cert("apiserver")).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) >= {"localhost", "kubernetes.default.svc.cluster.local"}
    assert set(names.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address(pki.KUBERNETES_SERVICE_IP),
    }


def test_keys_are_private_and_usable_by_tls(generated: pki.Pki) -> None:
    for key in [generated.ca_key, generated.sa_key, generated.key("admin"), generated.key("apiserver")]:
        assert key.stat().st_mode & 0o077 == 0, key
    context = ssl.create_default_context(cafile=str(generated.ca_cert))
    context.load_cert_chain(str(generated.cert("admin")), str(generated.key("admin")))
    public = load(generated.cert("apiserver")).public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)


def test_kubeconfigs_embed_their_credentials(generated: pki.Pki, tmp_path: Path) -> None:
    path = pki.write_client_kubeconfig(generated, "admin", "https://127.0.0.1:6443", tmp_path / "kubeconfig")
    document = yaml.safe_load(path.read_text())
    assert document["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    cluster_ca = base64.b64decode(document["clusters"][0]["cluster"]["certificate-authority-data"])
    assert cluster_ca == generated.ca_cert.read_bytes()
    user = document["users"][0]["user"]
    assert base64.b64decode(user["client-certificate-data"]) == generated.cert("admin").read_bytes()
    assert path.stat().st_mode & 0o077 == 0

    token_path = pki.write_token_kubeconfig("https://h:1", b"CA", "system:serviceaccount:ns:sa", "tok", tmp_path / "t")
    token_doc = yaml.safe_load(token_path.read_text())
    assert token_doc["users"] == [{"name": "system:serviceaccount:ns:sa", "user": {"token": "tok"}}]
