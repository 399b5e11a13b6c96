"""A job's token as ZeroMQ CURVE keys: TCP traffic is encrypted and the token itself never travels.

Both ends derive the same two key pairs from the token (HMAC-SHA256 with a label per role): the hub
serves with the server pair and lets in only the client key; a viewer or a remote rank connects with
the client pair and the server's public key. Someone without the token cannot even finish the
handshake, and someone who captures the traffic learns nothing of the token or of the records.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import zmq
from zmq.utils import z85


@dataclass(frozen=True)
class CurveKeys:
    server_public: bytes
    server_secret: bytes
    client_public: bytes
    client_secret: bytes

    def serve(self, socket: zmq.Socket) -> None:
        """Make ``socket`` a CURVE server of this job (the hub's gatekeeper checks the client key)."""
        socket.curve_server = True
        socket.curve_secretkey = self.server_secret
        socket.curve_publickey = self.server_public
        socket.zap_domain = b"optwatch"

    def connect_as_client(self, socket: zmq.Socket) -> None:
        socket.curve_serverkey = self.server_public
        socket.curve_secretkey = self.client_secret
        socket.curve_publickey = self.client_public


def _secret(token: str, role: bytes) -> bytes:
    return z85.encode(hmac.new(token.encode(), b"optwatch curve " + role, hashlib.sha256).digest())


def curve_keys(token: str) -> CurveKeys:
    server_secret, client_secret = _secret(token, b"server"), _secret(token, b"client")
    return CurveKeys(
        server_public=zmq.curve_public(server_secret),
        server_secret=server_secret,
        client_public=zmq.curve_public(client_secret),
        client_secret=client_secret,
    )
