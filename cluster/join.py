"""Joining an existing Ray cluster (`livemig run --address`), checked before Ray is asked.

`ray.init(address=...)` waits minutes, printing gRPC warnings, for a head that
is not there; this module answers in one line within seconds instead. Token
authentication is Ray's own (docs.ray.io, "Ray token authentication"): with
RAY_AUTH_MODE=token on every node, Ray reads the token from RAY_AUTH_TOKEN,
else from the file RAY_AUTH_TOKEN_PATH names, else from ~/.ray/auth_token.
livemig adds nothing to that chain; `--auth-token-file` only sets
RAY_AUTH_TOKEN_PATH for this run, after checking that the file can be read
and is not empty (Ray aborts on an unreadable one rather than saying why).
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

DEFAULT_PORT = 6379  # `ray start --head`'s GCS port
CONNECT_S = 5.0


def address_problem(address: str) -> str | None:
    """Why nothing can be joined at `address` ("host:port", or "auto"), or None when its head answers."""
    if address == "auto" or address.startswith("ray://"):
        return None  # Ray finds the cluster itself / Ray Client: left to Ray
    host, _, port = address.rpartition(":") if ":" in address else (address, "", str(DEFAULT_PORT))
    host = host.strip("[]")  # an IPv6 literal, [::1]:6379
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"--address: {address!r} is not HOST:PORT (the head's GCS port, 6379 unless `ray start --port`)"
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_S) as conn:
            speaks = speaks_grpc(conn)
    except OSError as exc:
        return (f"--address: no Ray head answers at {host}:{port} ({exc.strerror or exc}); start one with "
                f"`ray start --head --port {port}` there, or run without --address for the embedded cluster")
    if not speaks:  # ray.init would wait without end for a GCS there
        return (f"--address: {host}:{port} answers but is not a Ray head (no gRPC there); give the head's GCS "
                f"port, 6379 unless `ray start --port`")
    return None


# HTTP/2's client preface and an empty SETTINGS frame (RFC 9113, 3.4 and 6.5): a gRPC server such
# as Ray's GCS answers with a SETTINGS frame of its own (frame type 4, the fourth byte).
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def speaks_grpc(conn: socket.socket) -> bool:
    """Does the peer on `conn` answer HTTP/2's preface with a SETTINGS frame (within CONNECT_S)?"""
    conn.settimeout(CONNECT_S)
    try:
        conn.sendall(_H2_PREFACE)
        head = b""
        while len(head) < 9:
            chunk = conn.recv(9 - len(head))
            if not chunk:
                break
            head += chunk
    except OSError:
        return False
    return len(head) == 9 and head[3] == 4


def token_problem(path: str | None) -> str | None:
    """Why the token file `path` cannot serve (None when it can, or when no file was given)."""
    if path is None:
        return None
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        return f"--auth-token-file: cannot read {p}: {getattr(exc, 'strerror', None) or exc}"
    if not text:
        return f"--auth-token-file: {p} is empty; `ray get-auth-token` on the head prints the cluster's token"
    return None


def use_token_file(path: str | None) -> None:
    """Make Ray read its token from `path` for this process and the ones it starts."""
    if path is not None:
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(Path(path).expanduser())


def join_refused(address: str, exc: Exception) -> str:
    """One line for a cluster that answered but could not be joined (Ray's ConnectionError)."""
    return (f"--address: could not join the Ray cluster at {address} ({str(exc).splitlines()[0]}); if it runs "
            f"with token authentication (RAY_AUTH_MODE=token), give its token: RAY_AUTH_TOKEN, --auth-token-file, "
            f"or ~/.ray/auth_token (`ray get-auth-token` on the head prints it)")
