"""The server's TLS files, read at start and again on reload, served without a restart.

gRPC asks ``ServerCertificates`` for a configuration at each new connection's handshake
(``grpc.dynamic_ssl_server_credentials``): after a reload it hands over the new files once,
and connections made from then on use them; connections already open keep theirs. Files
that do not load (a key that does not match its certificate, a file that is not PEM) are
refused with ``ConfigError`` naming the variable, at start and on reload alike, so a bad
new file never replaces a good one. Whether clients must present a certificate (mutual
TLS) is fixed at start. The HTTP/JSON port takes ``ssl_context`` at each new connection,
so a reload applies to it the same way.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from .errors import ConfigError

__all__ = ["ServerCertificates"]


def _checked(cert_file: Path, key_file: Path, client_ca_file: Path | None) -> ssl.SSLContext:
    """A server TLS context of these files (mutual TLS with ``client_ca_file``), as the
    HTTP/JSON port serves them; raise ``ConfigError`` naming the variable whose file does
    not load."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(
            "QUOTA_AUTHORITY_TLS_CERT_FILE and QUOTA_AUTHORITY_TLS_KEY_FILE: "
            f"{cert_file} and {key_file} are not a PEM certificate chain and its key: {e}"
        ) from None
    if client_ca_file is not None:
        try:
            context.load_verify_locations(client_ca_file)
        except (ssl.SSLError, OSError) as e:
            raise ConfigError(
                f"QUOTA_AUTHORITY_TLS_CLIENT_CA_FILE: {client_ca_file} is not a PEM CA bundle: {e}"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class ServerCertificates:
    """The certificate chain, key and optional client CA at these paths."""

    def __init__(self, cert_file: Path, key_file: Path, client_ca_file: Path | None) -> None:
        self._files = (cert_file, key_file, client_ca_file)
        self._current, self._ssl_context = self._read()
        self._pending: grpc.ServerCertificateConfiguration | None = None

    def _read(self) -> tuple[grpc.ServerCertificateConfiguration, ssl.SSLContext]:
        cert_file, key_file, client_ca_file = self._files
        context = _checked(cert_file, key_file, client_ca_file)
        return grpc.ssl_server_certificate_configuration(
            [(key_file.read_bytes(), cert_file.read_bytes())],
            root_certificates=None if client_ca_file is None else client_ca_file.read_bytes(),
        ), context

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that follow ``reload``."""
        return grpc.dynamic_ssl_server_credentials(
            self._current,
            self._fetch,
            require_client_authentication=self._files[2] is not None,
        )

    def reload(self) -> None:
        """Read the files again; new connections use them. Raises ``ConfigError`` (the files
        in use stay) when they do not load."""
        self._pending, self._ssl_context = self._read()

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context of the files in use, for a new connection of the HTTP/JSON port
        (client certificates required when there is a client CA)."""
        return self._ssl_context

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC at each handshake; None means "unchanged".
        pending, self._pending = self._pending, None
        return pending
