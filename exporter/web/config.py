"""Securing /metrics the way Prometheus exporters do: an exporter-toolkit style web config file.

    tls_server_config:
      cert_file: server.crt
      key_file: server.key
      client_ca_file: ca.crt            # optional: require client certificates
      client_auth_type: RequireAndVerifyClientCert
    basic_auth_users:
      prometheus: $2b$12$...            # bcrypt hash, never the password

Unknown keys are rejected with the field's name, like the rest of the configuration.
"""

from __future__ import annotations

import base64
import binascii
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import bcrypt
import yaml
from aiohttp import web

from exporter.config import ConfigError

_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_TLS_KEYS = {"cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version"}
_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}


@dataclass(frozen=True)
class WebConfig:
    tls: ssl.SSLContext | None = None
    users: Mapping[str, bytes] = field(default_factory=dict)


def load_web_config(path: Path) -> WebConfig:
    src = str(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"web.config_file: {src}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{src}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{src}: must be a mapping")
    unknown = set(raw) - {"tls_server_config", "basic_auth_users", "http_server_config"}
    if unknown:
        raise ConfigError(f"{src}: {sorted(unknown)[0]}: unknown key")
    users = raw.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        raise ConfigError(f"{src}: basic_auth_users: must map user names to bcrypt hashes")
    hashed: dict[str, bytes] = {}
    for user, h in users.items():
        if not isinstance(h, str) or not h.startswith(("$2a$", "$2b$", "$2y$")):
            raise ConfigError(f"{src}: basic_auth_users.{user}: not a bcrypt hash (use e.g. htpasswd -nBC 10)")
        hashed[str(user)] = h.encode()
    tls = None
    if raw.get("tls_server_config"):
        tls = _tls_context(raw["tls_server_config"], src, path.parent)
    return WebConfig(tls=tls, users=hashed)


def _tls_context(cfg: Any, src: str, base: Path) -> ssl.SSLContext:
    if not isinstance(cfg, dict):
        raise ConfigError(f"{src}: tls_server_config: must be a mapping")
    unknown = set(cfg) - _TLS_KEYS
    if unknown:
        raise ConfigError(f"{src}: tls_server_config.{sorted(unknown)[0]}: unknown key")
    for key in ("cert_file", "key_file"):
        if not cfg.get(key):
            raise ConfigError(f"{src}: tls_server_config.{key}: required when TLS is configured")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # CPython 3.13's default context verifies X.509 strictly (RFC 5280: a CA certificate must carry keyUsage,
    # a client certificate an authority key identifier); CPython <= 3.12 and exporter-toolkit (Go's
    # crypto/x509) do not ask for them. Off, so the same client certificates work on every supported Python,
    # as with Go exporters; the chain, signatures, validity and the CA flag are still verified.
    ctx.verify_flags &= ~ssl.VERIFY_X509_STRICT
    version = str(cfg.get("min_version", "TLS12"))
    if version not in _VERSIONS:
        raise ConfigError(f"{src}: tls_server_config.min_version: one of {sorted(_VERSIONS)}")
    ctx.minimum_version = _VERSIONS[version]
    try:
        ctx.load_cert_chain(base / cfg["cert_file"], base / cfg["key_file"])
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{src}: tls_server_config.cert_file/key_file: {exc}") from None
    auth = cfg.get("client_auth_type", "NoClientCert")
    if auth not in _CLIENT_AUTH:
        raise ConfigError(f"{src}: tls_server_config.client_auth_type: one of {sorted(_CLIENT_AUTH)}")
    ctx.verify_mode = _CLIENT_AUTH[auth]
    if cfg.get("client_ca_file"):
        try:
            ctx.load_verify_locations(base / cfg["client_ca_file"])
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{src}: tls_server_config.client_ca_file: {exc}") from None
    elif ctx.verify_mode != ssl.CERT_NONE:
        raise ConfigError(f"{src}: tls_server_config.client_ca_file: required for {auth}")
    return ctx


@lru_cache(maxsize=256)
def _check(hashed: bytes, password: bytes) -> bool:
    # bcrypt is slow by design; Prometheus scrapes with the same credentials every time.
    return bcrypt.checkpw(password, hashed)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def basic_auth_middleware(users: Mapping[str, bytes]) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                user, password = "", ""
            hashed = users.get(user)
            if hashed is not None and _check(hashed, password.encode()):
                return await handler(request)
        return web.Response(status=401, text="Unauthorized\n",
                            headers={"WWW-Authenticate": 'Basic realm="agno-exporter"'})

    return middleware
