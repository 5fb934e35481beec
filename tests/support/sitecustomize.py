"""Loaded via PYTHONPATH in subprocess tests: records every attempt to open an IP connection or resolve a
host name into $SPINE_NET_LOG, and refuses it, so a test can assert the program tried none."""
import os
import socket

_log = os.environ.get("SPINE_NET_LOG")
_real_connect = socket.socket.connect
_real_getaddrinfo = socket.getaddrinfo


def _record(what):
    if _log:
        with open(_log, "a") as f:
            f.write(what + "\n")


def _connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1", "localhost"):
        _record(f"connect {address!r}")
        raise OSError("network disabled in test")
    return _real_connect(self, address)


def _getaddrinfo(host, *args, **kwargs):
    if host not in ("127.0.0.1", "::1", "localhost", None):
        _record(f"getaddrinfo {host!r}")
        raise socket.gaierror("network disabled in test")
    return _real_getaddrinfo(host, *args, **kwargs)


socket.socket.connect = _connect
socket.getaddrinfo = _getaddrinfo
