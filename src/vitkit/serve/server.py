"""The uvicorn server `vitkit serve` runs: its HTTP protocol with a deadline for each request's headers,
the line it prints once it accepts connections, and the warning when it listens beyond this machine."""

from __future__ import annotations

import ipaddress
import sys

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .limits import ServeLimits


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, plus a deadline for each request's headers: uvicorn closes idle
    keep-alive connections but would wait forever on a client that connects and then sends nothing, or
    sends its headers a byte at a time."""

    header_timeout = ServeLimits.client_timeout

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_header_deadline()

    def on_response_complete(self) -> None:
        self._arm_header_deadline()  # before uvicorn reads a pipelined request, whose headers then disarm it
        super().on_response_complete()

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not self._waiting_after and self._header_deadline is not None:
            self._header_deadline.cancel()  # the request's headers are in; the app times its body
            self._header_deadline = None

    def connection_lost(self, exc) -> None:
        super().connection_lost(exc)
        if self._header_deadline is not None:
            self._header_deadline.cancel()

    def _arm_header_deadline(self) -> None:
        if getattr(self, "_header_deadline", None) is not None:
            self._header_deadline.cancel()
        self._waiting_after = self.cycle
        self._header_deadline = self.loop.call_later(self.header_timeout, self._close_if_still_waiting)

    def _close_if_still_waiting(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def guarded_protocol(header_timeout: float) -> type[GuardedH11Protocol]:
    """GuardedH11Protocol with a deadline of `header_timeout` seconds (uvicorn takes a class, not an instance)."""
    return type("ServeProtocol", (GuardedH11Protocol,), {"header_timeout": header_timeout})


def warn_if_exposed(host: str) -> None:
    """The API has no authentication: say so when it listens beyond this machine."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        print(
            f"vitkit serve: warning: listening on {host}, reachable from other machines; the API has no "
            "authentication, so anyone who can reach this port can use it. Put it behind an authenticating "
            "proxy, or bind to 127.0.0.1",
            file=sys.stderr,
        )


class AnnouncingServer(uvicorn.Server):
    """uvicorn's server, printing where it listens (the real port, also for --port 0) once it accepts
    connections."""

    def __init__(self, config: uvicorn.Config, classifier):
        super().__init__(config)
        self.classifier = classifier

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started and self.servers:
            port = self.servers[0].sockets[0].getsockname()[1]
            host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
            runtime = self.classifier.runtime
            print(
                f"vitkit serve: {self.classifier.name} ({self.classifier.summary}) on {runtime['backend']}, "
                f"{runtime['device']}, {runtime['precision']} ({runtime['precision_reason']}) "
                f"at http://{host}:{port}/ (Ctrl+C to stop)",
                flush=True,
            )
