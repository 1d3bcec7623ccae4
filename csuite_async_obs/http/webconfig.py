"""The exporter's web-config file: TLS and HTTP basic auth, as Prometheus's own exporters.

The file has the format of the Prometheus exporter-toolkit (node_exporter's
``--web.config.file``), so one file serves every exporter on a host::

    tls_server_config:
      cert_file: server.crt          # PEM; relative paths are read from the file's folder
      key_file: server.key           # PEM, unencrypted
      min_version: TLS12             # TLS10 .. TLS13; default TLS12
      max_version: TLS13             # optional
      client_auth_type: RequireAndVerifyClientCert   # or VerifyClientCertIfGiven, NoClientCert
      client_ca_file: clients-ca.crt # required with the two verifying client auth types
    http_server_config:
      http2: false                   # accepted; the exporter speaks HTTP/1.1 only
    basic_auth_users:
      prometheus: $2y$10$...         # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':\\n')

An empty file, or no file, means plain HTTP without authentication.  Keys the
exporter cannot honour (``cipher_suites``, ``client_allowed_sans``, custom
headers ...) are refused rather than ignored: a security setting that is
silently dropped is worse than a start-up error.

Design choice for basic auth: bcrypt is slow on purpose (tens to hundreds of
milliseconds per check), and Prometheus sends the same ``Authorization`` header
on every scrape, so a successful check is remembered by the SHA-256 of the
header (a bounded LRU; the header itself is never stored).  A scrape with known
credentials then costs one hash; a wrong password costs a full bcrypt check
every time.  Unknown user names are checked against a dummy hash of the same
cost, so that response times do not reveal which user names exist.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import hmac
import os
import re
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import bcrypt
import yaml

from ..config.errors import ConfigError

__all__ = ["BasicAuth", "WebSecurity", "load_web_config"]

VARIABLE = "CSUITE_WEB_CONFIG"

_Fail = Callable[[str], ConfigError]

_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users")
_TLS_KEYS = ("cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version",
             "max_version")  # fmt: skip
_HTTP_KEYS = ("http2",)
_BCRYPT_HASH = re.compile(r"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$")
# bcrypt uses the first 72 bytes of a password; the bcrypt package refuses longer ones.
_BCRYPT_MAX_PASSWORD = 72


class BasicAuth:
    """Checks ``Authorization: Basic ...`` headers against bcrypt hashes.

    Call it with the header (``None`` when absent) to get ``True`` or
    ``False``.  :meth:`cached` answers at once when no bcrypt check is needed,
    which lets the exporter keep slow checks off its main thread.
    """

    def __init__(self, users: Mapping[str, str | bytes], *, cache_size: int = 256) -> None:
        """``users`` maps user names to bcrypt hashes; ``cache_size`` bounds the remembered headers."""
        self._users = [
            (name.encode("utf-8"), hashed.encode("ascii") if isinstance(hashed, str) else hashed)
            for name, hashed in users.items()
        ]
        if not self._users:
            raise ValueError("BasicAuth needs at least one user")
        self._cost = max(int(hashed[4:6]) for _, hashed in self._users)
        self._dummy: bytes | None = None
        self._cache: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    @staticmethod
    def _key(header: str) -> bytes:
        return hashlib.sha256(header.encode("utf-8", "surrogatepass")).digest()

    @staticmethod
    def _credentials(header: str | None) -> tuple[bytes, bytes] | None:
        if not header:
            return None
        scheme, _, encoded = header.strip().partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
        user, sep, password = decoded.partition(b":")
        return (user, password) if sep else None

    def cached(self, header: str | None) -> bool | None:
        """``True`` for a header that passed before, ``False`` for one that cannot pass
        (absent, not Basic, malformed), ``None`` when only a bcrypt check can tell."""
        if self._credentials(header) is None:
            return False
        assert header is not None
        key = self._key(header)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return True
        return None

    def __call__(self, header: str | None) -> bool:
        """Whether ``header`` holds the name and password of a configured user."""
        credentials = self._credentials(header)
        if credentials is None:
            return False
        assert header is not None
        if self.cached(header):
            return True
        user, password = credentials
        hashed: bytes | None = None
        # Compare with every name, in constant time each, so that the time taken
        # does not depend on which name matched or how much of it.
        for name, candidate in self._users:
            if hmac.compare_digest(name, user):
                hashed = candidate
        ok = False
        if len(password) <= _BCRYPT_MAX_PASSWORD:
            ok = bcrypt.checkpw(password, hashed if hashed is not None else self._dummy_hash())
        ok = ok and hashed is not None
        if ok:
            key = self._key(header)
            with self._lock:
                self._cache[key] = None
                self._cache.move_to_end(key)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return ok

    def _dummy_hash(self) -> bytes:
        if self._dummy is None:
            self._dummy = bcrypt.hashpw(os.urandom(16).hex().encode(), bcrypt.gensalt(self._cost))
        return self._dummy


@dataclass(frozen=True)
class WebSecurity:
    """What a web-config file asks for: a server TLS context and a basic-auth check."""

    ssl_context: ssl.SSLContext | None = None
    authenticate: BasicAuth | None = None
    path: str = ""

    @property
    def tls(self) -> bool:
        return self.ssl_context is not None

    @property
    def basic_auth(self) -> bool:
        return self.authenticate is not None


def load_web_config(
    path: str | os.PathLike[str] | None, *, variable: str = VARIABLE
) -> WebSecurity:
    """Read a web-config file; relative file names in it are read from its folder.

    Args:
        path: the file; ``None`` or ``""`` means no TLS and no authentication.
        variable: the setting named in errors (``CSUITE_WEB_CONFIG`` or the
            ``--metrics-web-config`` flag).

    Returns:
        A :class:`WebSecurity`; pass its ``ssl_context`` and ``authenticate``
        to :func:`csuite_async_obs.exporter.start_exporter`.

    Raises:
        ConfigError: the file cannot be read or parsed, has an unknown key or a
            bad value, or names a certificate, key or CA file that cannot be loaded.
            The message is one line naming ``variable``, the path and what is accepted.
    """
    if path is None or str(path).strip() == "":
        return WebSecurity()
    text_path = os.fspath(path)

    def fail(accepted: str) -> ConfigError:
        return ConfigError(variable, text_path, " ".join(accepted.split()))

    try:
        with open(text_path, encoding="utf-8") as f:
            raw = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise fail(f"a readable web-config file ({reason})") from None
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise fail(f"a YAML web-config file ({problem}{where})") from None
    if data is None:
        return WebSecurity(path=text_path)
    _mapping(fail, data, "the top level", _TOP_KEYS)
    base = os.path.dirname(os.path.abspath(text_path))
    context = _tls(fail, data.get("tls_server_config"), base)
    http = data.get("http_server_config")
    if http is not None:
        _mapping(fail, http, "http_server_config", _HTTP_KEYS)
        if not isinstance(http.get("http2", True), bool):
            raise fail("http_server_config.http2 to be true or false")
    auth = _users(fail, data.get("basic_auth_users"))
    return WebSecurity(ssl_context=context, authenticate=auth, path=text_path)


def _mapping(fail: _Fail, value: Any, where: str, keys: tuple[str, ...]) -> None:
    if not isinstance(value, dict):
        raise fail(f"{where} to be a mapping with the keys {', '.join(keys)}")
    unknown = sorted(str(k) for k in value if k not in keys)
    if unknown:
        raise fail(f"only the keys {', '.join(keys)} in {where} "
                   f"(not supported: {', '.join(unknown)})")  # fmt: skip


def _file(fail: _Fail, tls: dict[str, Any], key: str, base: str, what: str) -> str:
    value = tls.get(key)
    if not isinstance(value, str) or not value.strip():
        raise fail(f"tls_server_config.{key}: the path of {what}")
    resolved = os.path.join(base, os.path.expanduser(value.strip()))
    if not os.path.isfile(resolved):
        raise fail(f"tls_server_config.{key}: the path of {what} ({resolved!r} is not a file)")
    return resolved


def _version(
    fail: _Fail, tls: dict[str, Any], key: str, default: str | None
) -> ssl.TLSVersion | None:
    value = tls.get(key, default)
    if value is None:
        return None
    if not isinstance(value, str) or value not in _TLS_VERSIONS:
        raise fail(f"tls_server_config.{key}: one of {', '.join(_TLS_VERSIONS)}")
    return _TLS_VERSIONS[value]


def _tls(fail: _Fail, tls: Any, base: str) -> ssl.SSLContext | None:
    if tls is None or tls == {}:
        return None
    _mapping(fail, tls, "tls_server_config", _TLS_KEYS)
    cert = _file(fail, tls, "cert_file", base, "a PEM certificate")
    key = _file(fail, tls, "key_file", base, "the certificate's PEM private key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    minimum = _version(fail, tls, "min_version", "TLS12")
    maximum = _version(fail, tls, "max_version", None)
    assert minimum is not None
    if maximum is not None and maximum < minimum:
        raise fail("tls_server_config.max_version not below min_version")
    try:
        context.minimum_version = minimum
        if maximum is not None:
            context.maximum_version = maximum
    except (ValueError, ssl.SSLError) as exc:
        raise fail(f"TLS versions this Python's OpenSSL supports ({exc})") from None
    try:
        # An encrypted key would make OpenSSL prompt on the terminal; answer
        # with an empty passphrase so that it fails instead.
        context.load_cert_chain(cert, key, password=lambda: b"")
    except (ssl.SSLError, OSError) as exc:
        raise fail("tls_server_config.cert_file and key_file: a PEM certificate and its "
                   f"unencrypted PEM private key ({exc})") from None  # fmt: skip
    auth_type = tls.get("client_auth_type") or "NoClientCert"
    if auth_type not in _CLIENT_AUTH:
        raise fail(
            "tls_server_config.client_auth_type: one of " + ", ".join(_CLIENT_AUTH)
            + " (RequestClientCert and RequireAnyClientCert accept certificates without "
            "verifying them and are not supported)"
        )  # fmt: skip
    context.verify_mode = _CLIENT_AUTH[auth_type]
    if tls.get("client_ca_file") is not None:
        if auth_type == "NoClientCert":
            raise fail("tls_server_config.client_auth_type set to VerifyClientCertIfGiven or "
                       "RequireAndVerifyClientCert when client_ca_file is given")  # fmt: skip
        ca = _file(fail, tls, "client_ca_file", base, "the PEM CA certificates of clients")
        try:
            context.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError) as exc:
            raise fail(f"tls_server_config.client_ca_file: PEM CA certificates ({exc})") from None
    elif auth_type != "NoClientCert":
        raise fail(f"tls_server_config.client_ca_file with client_auth_type {auth_type}")
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(["http/1.1"])
    return context


def _users(fail: _Fail, users: Any) -> BasicAuth | None:
    if users is None or users == {}:
        return None
    accepted = ("basic_auth_users: a mapping of user names (strings without ':') to bcrypt "
                "hashes ($2a$, $2b$ or $2y$, e.g. from htpasswd -nBC 10 USER)")  # fmt: skip
    if not isinstance(users, dict):
        raise fail(accepted)
    checked: dict[str, str] = {}
    for name, hashed in users.items():
        if not isinstance(name, str) or not name or ":" in name:
            raise fail(f"{accepted}; bad user name {name!r}")
        if not isinstance(hashed, str) or not _BCRYPT_HASH.match(hashed.strip()):
            # The hash is not secret, but a password pasted here by mistake is.
            raise fail(f"{accepted}; the value for {name!r} is not a bcrypt hash")
        checked[name] = hashed.strip()
    return BasicAuth(checked)
