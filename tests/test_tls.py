"""Transport security, against the real broker and a real auth service: ``amqps://`` and
``https://`` with a site CA, a client that trusts only that CA, and a server certificate
from another CA (made in the test) refused."""

from __future__ import annotations

from pathlib import Path

import aiormq
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from yarl import URL

from bus.connection import Bus
from bus.credentials import fetch_broker_token
from bus.errors import AuthUnavailable
from bus.tls import SiteCA
from idlecloud.dev.services import (
    AMQPS_PORT,
    HOST,
    BrokerInfo,
    broker_tls_url,
    free_port,
    management,
)
from services.auth.service import AuthService, AuthSettings
from services.auth.tokens import SigningKey, mint_api_key

from .helpers import wait_until
from .login import Login


def test_the_plain_port_listens_on_loopback_only_and_amqps_is_served() -> None:
    overview = management("GET", "overview")
    assert isinstance(overview, dict)
    listeners = {(item["protocol"], item["ip_address"], item["port"])
                 for item in overview["listeners"]}  # fmt: skip
    plain = {ip for protocol, ip, _port in listeners if protocol == "amqp"}
    assert plain == {HOST}, listeners
    assert ("amqp/ssl", HOST, AMQPS_PORT) in listeners, listeners


async def test_a_token_holder_works_over_amqps_and_another_ca_is_refused(
    broker: BrokerInfo, login: Login, tmp_path: Path
) -> None:
    tls_url = URL(broker_tls_url(broker.vhost))
    await login.open_door("user", "alice")
    token = login.token("user", "alice")
    async with Bus(str(tls_url.with_user("key").with_password(token))) as alice:
        channel = await alice.channel()
        queue = await channel.declare_queue("ns.alice.over-tls", auto_delete=True)
        assert queue.name == "ns.alice.over-tls"
        await channel.close()
    SiteCA.create("another lab's CA").save(tmp_path / "other")
    elsewhere = tls_url.update_query(cafile=str(tmp_path / "other" / "ca.pem"))
    with pytest.raises(aiormq.exceptions.AMQPConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        # aiormq's own connect, which aio-pika's uses: aio-pika's leaves an unawaited close
        await aiormq.connect(str(elsewhere.with_user("key").with_password(token)))


async def test_the_auth_service_serves_https_and_another_ca_is_refused(
    scratch: tuple[BrokerInfo, Bus], tmp_path: Path
) -> None:
    broker, bus = scratch
    key = SigningKey.generate()
    private, _public = key.save(tmp_path / "keys")
    site = SiteCA.create("a lab's CA")
    files = site.issue_files(tmp_path / "tls", "auth", [HOST])
    port = free_port()
    service = AuthService(AuthSettings(private, vhost=broker.vhost, http_port=port, tls=files),
                          retry_s=0.2)  # fmt: skip
    await service.start(bus)
    try:
        await wait_until(lambda: service.leadership.leading, what="the auth service to lead")
        _view, api_key = mint_api_key(key, "user", "alice")
        auth_url = f"https://{HOST}:{port}"
        token = await fetch_broker_token(api_key, auth_url, ca_file=files.ca_file)
        assert token.subject == "alice"
        SiteCA.create("another lab's CA").save(tmp_path / "other")
        with pytest.raises(AuthUnavailable, match="certificate verify failed"):
            await fetch_broker_token(api_key, auth_url, ca_file=tmp_path / "other" / "ca.pem")
        with pytest.raises(AuthUnavailable):  # plain HTTP gets no answer from a TLS port
            await fetch_broker_token(api_key, f"http://{HOST}:{port}")
    finally:
        await service.stop(1.0)


def test_a_site_ca_issues_certificates_only_it_vouches_for() -> None:
    site, other = SiteCA.create(), SiteCA.create()
    cert_pem, _key_pem = site.issue(["broker.lab.example", "127.0.0.1"])
    cert = x509.load_pem_x509_certificate(cert_pem)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["broker.lab.example"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert _signed_by(cert, site) and not _signed_by(cert, other)
    with pytest.raises(ValueError, match="at least one host"):
        site.issue([])


def _signed_by(cert: x509.Certificate, ca: SiteCA) -> bool:
    public = x509.load_pem_x509_certificate(ca.cert_pem).public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert cert.signature_hash_algorithm is not None
    try:
        public.verify(cert.signature, cert.tbs_certificate_bytes,
                      ec.ECDSA(cert.signature_hash_algorithm))  # fmt: skip
    except InvalidSignature:
        return False
    return True
