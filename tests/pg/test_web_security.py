"""Securing /metrics: TLS, client certificates and bcrypt basic auth from an exporter-toolkit web config,
and the database password never shown on a page, in /metrics or in the log."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
import yaml

from exporter.commands.service import Service
from exporter.config import ConfigError
from exporter.web.config import load_web_config
from tests.helpers.scrape import Samples
from tests.helpers.support import DEADLINE
from tests.pg.test_collect_e2e import make_service

USER, PASSWORD = "prometheus", "correct horse"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed server certificate for 127.0.0.1, and a client CA with one client certificate."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", "server.key", "-out", "server.crt", cwd=d)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test client CA",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=prometheus",
            "-keyout", "client.key", "-out", "client.csr", cwd=d)
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "client.ext", "-out", "client.crt", cwd=d)
    # A client certificate from a CA the server does not trust.
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=intruder",
            "-keyout", "rogue.key", "-out", "rogue.crt", cwd=d)
    return d


def write_config(pki: Path, name: str, cfg: dict[str, Any]) -> Path:
    path = pki / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def bcrypt_hash(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def client_ssl(pki: Path, cert: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "server.crt"))
    if cert is not None:
        ctx.load_cert_chain(pki / f"{cert}.crt", pki / f"{cert}.key")
    return ctx


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def get(url: str, *, ssl_ctx: ssl.SSLContext | bool = True, auth: tuple[str, str] | None = None,
              headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    timeout = aiohttp.ClientTimeout(total=10)
    headers = dict(headers or {})
    if auth is not None:
        headers["Authorization"] = basic(*auth)
    async with aiohttp.ClientSession(timeout=timeout) as s, s.get(url, ssl=ssl_ctx, headers=headers) as r:
        return r.status, dict(r.headers), await r.text()


async def wait_ready(service: Service, timeout: float = 20) -> None:
    for _ in range(int(timeout / 0.05)):
        if service.collector.ready:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("collector never ready")


def test_tls_and_basic_auth(db_url: str, pki: Path) -> None:
    path = write_config(pki, "web-auth.yml", {
        "tls_server_config": {"cert_file": "server.crt", "key_file": "server.key"},
        "basic_auth_users": {USER: bcrypt_hash(PASSWORD), "other": bcrypt_hash("other-pw")},
    })

    async def main() -> None:
        service = make_service(db_url, web={"config_file": str(path)})
        await service.start()
        try:
            await wait_ready(service)
            base = f"https://127.0.0.1:{service.port}"
            ctx = client_ssl(pki)
            status, _, body = await get(f"{base}/metrics", ssl_ctx=ctx, auth=(USER, PASSWORD))
            assert status == 200, body
            assert Samples(body).sum("agno_exporter_up") == 1
            status, _, body = await get(f"{base}/readyz", ssl_ctx=ctx, auth=("other", "other-pw"))
            assert status == 200 and body.startswith("ready"), body

            refused = [
                (USER, "wrong"),
                (USER, ""),
                ("nobody", PASSWORD),
                ("other", PASSWORD),  # another user's password
                None,
            ]
            for auth in refused:
                for endpoint in ("/metrics", "/", "/readyz", "/healthz"):
                    status, headers, body = await get(base + endpoint, ssl_ctx=ctx, auth=auth)
                    assert status == 401, (auth, endpoint, status)
                    assert headers.get("WWW-Authenticate", "").startswith("Basic realm="), headers
                    assert "agno_" not in body
            for header in ("Basic !!!not-base64", "Basic " + "x" * 10, "Bearer abc", "Basic "):
                status, headers, _ = await get(f"{base}/metrics", ssl_ctx=ctx, headers={"Authorization": header})
                assert status == 401 and "WWW-Authenticate" in headers, header

            # The server's certificate is verified by the client (it is self-signed: trusted only by cafile).
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await get(f"{base}/metrics", ssl_ctx=ssl.create_default_context(),
                          auth=(USER, PASSWORD))
            # Plain HTTP to the TLS port gets no metrics.
            with pytest.raises(aiohttp.ClientError):
                await get(f"http://127.0.0.1:{service.port}/metrics", auth=(USER, PASSWORD))
            # ... and the server still serves TLS afterwards.
            status, _, _ = await get(f"{base}/metrics", ssl_ctx=ctx, auth=(USER, PASSWORD))
            assert status == 200
        finally:
            await service.stop()

    asyncio.run(main())


def test_client_certificates_required(db_url: str, pki: Path) -> None:
    path = write_config(pki, "web-mtls.yml", {
        "tls_server_config": {"cert_file": "server.crt", "key_file": "server.key",
                              "client_ca_file": "ca.crt", "client_auth_type": "RequireAndVerifyClientCert"},
    })

    async def main() -> None:
        service = make_service(db_url, web={"config_file": str(path)})
        await service.start()
        try:
            url = f"https://127.0.0.1:{service.port}/metrics"
            status, _, body = await get(url, ssl_ctx=client_ssl(pki, "client"))
            assert status == 200 and "agno_exporter_up" in body
            for cert in (None, "rogue"):  # no certificate; one the client CA did not sign
                with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
                    status, _, body = await get(url, ssl_ctx=client_ssl(pki, cert))
                    raise AssertionError(f"client cert {cert}: got HTTP {status}")
            status, _, _ = await get(url, ssl_ctx=client_ssl(pki, "client"))
            assert status == 200
        finally:
            await service.stop()

    asyncio.run(main())


def test_client_certificates_and_basic_auth_together(db_url: str, pki: Path) -> None:
    path = write_config(pki, "web-both.yml", {
        "tls_server_config": {"cert_file": "server.crt", "key_file": "server.key",
                              "client_ca_file": "ca.crt", "client_auth_type": "RequireAndVerifyClientCert"},
        "basic_auth_users": {USER: bcrypt_hash(PASSWORD)},
    })

    async def main() -> None:
        service = make_service(db_url, web={"config_file": str(path)})
        await service.start()
        try:
            url = f"https://127.0.0.1:{service.port}/metrics"
            ctx = client_ssl(pki, "client")
            assert (await get(url, ssl_ctx=ctx))[0] == 401
            assert (await get(url, ssl_ctx=ctx, auth=(USER, PASSWORD)))[0] == 200
        finally:
            await service.stop()

    asyncio.run(main())


TLS = {"cert_file": "server.crt", "key_file": "server.key"}


@pytest.mark.parametrize(("cfg", "field"), [
    ({"tls_server_config": TLS, "basic_auth_user": {USER: "$2b$04$" + "a" * 53}}, "basic_auth_user"),
    ({"tls_server_config": {**TLS, "certfile": "server.crt"}}, "tls_server_config.certfile"),
    ({"basic_auth_users": {USER: PASSWORD}}, f"basic_auth_users.{USER}"),
    ({"basic_auth_users": {USER: "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g="}}, f"basic_auth_users.{USER}"),
    ({"basic_auth_users": {USER: None}}, f"basic_auth_users.{USER}"),
    ({"basic_auth_users": [USER]}, "basic_auth_users"),
    ({"tls_server_config": {"cert_file": "server.crt"}}, "tls_server_config.key_file"),
    ({"tls_server_config": {"key_file": "server.key"}}, "tls_server_config.cert_file"),
    ({"tls_server_config": {**TLS, "key_file": "missing.key"}}, "tls_server_config.cert_file/key_file"),
    ({"tls_server_config": {**TLS, "client_auth_type": "RequireAndVerifyClientCert"}},
     "tls_server_config.client_ca_file"),
    ({"tls_server_config": {**TLS, "client_auth_type": "Always"}}, "tls_server_config.client_auth_type"),
    ({"tls_server_config": {**TLS, "client_ca_file": "nope.crt",
                            "client_auth_type": "RequireAndVerifyClientCert"}}, "tls_server_config.client_ca_file"),
    ({"tls_server_config": "yes"}, "tls_server_config"),
])
def test_bad_web_config_names_the_field(pki: Path, cfg: dict[str, Any], field: str) -> None:
    path = write_config(pki, "bad.yml", cfg)
    with pytest.raises(ConfigError) as err:
        load_web_config(path)
    assert f"{field}:" in str(err.value), str(err.value)
    assert PASSWORD not in str(err.value)


def test_bad_web_config_fails_service_start(db_url: str, pki: Path) -> None:
    path = write_config(pki, "bad-service.yml", {"basic_auth_users": {USER: "plaintext"}})
    with pytest.raises(ConfigError, match=f"basic_auth_users.{USER}"):
        make_service(db_url, web={"config_file": str(path)})
    with pytest.raises(ConfigError, match="cannot read"):
        make_service(db_url, web={"config_file": str(pki / "does-not-exist.yml")})


SECRET = "s3cretpw"


@pytest.mark.parametrize("url", [
    f"postgresql://u:{SECRET}@127.0.0.1:9/db",
    f"postgresql+psycopg://u:{SECRET}@127.0.0.1:9/db",
    f"postgres://u:{SECRET}:x/y@127.0.0.1:9/db",
    f"postgresql://u@127.0.0.1:9/db?password={SECRET}&sslmode=disable",
    f"host=127.0.0.1 port=9 user=u password={SECRET} dbname=db",
    # libpq's own parse errors quote the offending text: a mistyped password must not be echoed
    f"postgresql://u:{SECRET}%zz@127.0.0.1:9/db",
    f"host=127.0.0.1 port=9 user=u password='x7 {SECRET}' dbname=db",
])
def test_database_password_never_shown(url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def main() -> None:
        service = make_service(url)
        await service.start()
        try:
            base = f"http://127.0.0.1:{service.port}"
            deadline = time.monotonic() + DEADLINE
            while True:
                _, _, body = await get(f"{base}/metrics")
                if Samples(body).sum("agno_exporter_poll_errors_total") >= 2:
                    break
                assert time.monotonic() < deadline, "no poll error against a closed port"
                await asyncio.sleep(0.05)
            pages = {}
            for endpoint in ("/", "/readyz", "/metrics", "/healthz"):
                status, headers, body = await get(base + endpoint)
                pages[endpoint] = (status, str(headers), body)
        finally:
            await service.stop()
        assert pages["/readyz"][0] == 503
        assert Samples(pages["/metrics"][2]).sum("agno_exporter_up") == 0
        assert "127.0.0.1" in pages["/"][2]  # the database is shown, redacted
        assert re.search(r"<tr class=bad><th>last error</th><td>[^<]*, database: ", pages["/"][2])  # and why
        for endpoint, (_, headers, body) in pages.items():
            assert SECRET not in headers + body, endpoint
        assert any("poll failed" in r.getMessage() for r in caplog.records)
        for r in caplog.records:
            assert SECRET not in r.getMessage(), r.getMessage()
            assert SECRET not in caplog.text

    asyncio.run(main())
