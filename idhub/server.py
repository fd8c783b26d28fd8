"""Start the HTTP server: uvicorn on the public port, and on the management port when one is set.

One application listens on both sockets; :class:`idhub.routing.FrontDoor` tells them apart by the port a
request came in on (``scope["server"]``), so the management port (``IDHUB_MANAGEMENT_PORT``) answers
``/metrics``, ``/healthz`` and ``/readyz`` only, and the public port no longer shows ``/metrics``.

Metrics are per process. With ``--workers N`` each worker keeps its own figures and a scrape reaches one
of them, so production runs one process per container (as the Helm chart does) and scales with replicas;
``serve --workers N>1`` says so in one warning line. Prometheus' multiprocess mode was not chosen: it
keeps every value in a memory-mapped file behind a lock, which is what :class:`idhub.metrics.Metrics`
avoids on the token endpoint's path, and it cannot carry collectors read at scrape time (the pool).
"""

from __future__ import annotations

import inspect
import logging
import os
import socket
import sys
from typing import Any

from idhub.settings import Settings

log = logging.getLogger(__name__)

APP = "idhub.app:create_app"
STARTUP_FAILURE = 3  # uvicorn's exit status when the server could not start


class ServerError(Exception):
    """The server cannot start as asked; the message is one line naming the setting and the fix."""


def run_server(
    settings: Settings, *, host: str, port: int, workers: int, log_config: dict[str, Any] | None = None
) -> None:
    """Serve idhub with uvicorn until stopped: ``workers`` processes share the listening sockets.

    ``log_config`` is a :func:`logging.config.dictConfig` mapping applied in every process (uvicorn's own
    when ``None``). Raises :class:`ServerError` when the management port cannot be used; exits with
    uvicorn's start-up failure status when the server did not start.
    """
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG
    from uvicorn.supervisors import Multiprocess

    management = settings.management_port
    if management is not None:
        if management == port:
            raise ServerError(
                f"IDHUB_MANAGEMENT_PORT ({management}) is the port serve listens on; choose another port for it"
            )
        os.environ["IDHUB_MANAGEMENT_PORT"] = str(management)  # the workers' settings come from the environment
    config = uvicorn.Config(
        APP,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        proxy_headers=False,
        access_log=False,
        server_header=False,
        log_level=settings.log_level.lower(),
        log_config=log_config if log_config is not None else LOGGING_CONFIG,
    )
    extra = [_bind(host, management)] if management is not None else []
    sockets = [config.bind_socket(), *extra]  # bind_socket exits (status 3) after logging a failure
    if management is not None:
        log.info("management endpoints (/metrics, /healthz, /readyz) on port %d", management)
    if workers > 1:
        log.warning(
            "with --workers %d each worker keeps its own metrics and a scrape of /metrics reaches one of them; "
            "in production run one process per container (--workers 1) and scale with replicas",
            workers,
        )
        if "target" in inspect.signature(Multiprocess.__init__).parameters:
            # Older uvicorn releases (0.30, the lower bound) take the function each worker runs; newer ones make it.
            Multiprocess(config, target=uvicorn.Server(config).run, sockets=sockets).run()  # type: ignore[call-arg]
        else:
            Multiprocess(config, sockets=sockets).run()
        return
    server = uvicorn.Server(config)
    try:
        server.run(sockets=sockets)
    except KeyboardInterrupt:
        pass
    finally:
        for sock in sockets:
            sock.close()
    if not server.started:
        sys.exit(STARTUP_FAILURE)


def _bind(host: str, port: int) -> socket.socket:
    """Open the management port's listening socket (inherited by the worker processes)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServerError(
            f"cannot listen on {host}:{port} for IDHUB_MANAGEMENT_PORT ({exc.strerror}); choose a free port"
        ) from None
    sock.set_inheritable(True)
    return sock
