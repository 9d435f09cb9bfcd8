"""`drlaif-server`: run the reward server."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

import uvicorn

from server.config import parse_settings

log = logging.getLogger("server")
# uvicorn's wait for open connections once the server stops.
GRACEFUL_SHUTDOWN_S = 10


class DrainingServer(uvicorn.Server):
    """uvicorn, where SIGTERM drains: new scoring requests get 503 and readiness turns 503,
    the requests in flight get ``grace_s`` to finish, then the server stops and the process
    exits 0. SIGINT, or a second signal, is uvicorn's own prompt stop."""

    def __init__(self, config: uvicorn.Config, service, grace_s: float):
        super().__init__(config)
        self.service = service
        self.grace_s = grace_s
        self._drain_deadline: float | None = None

    def handle_exit(self, sig: int, frame) -> None:
        if sig == signal.SIGTERM and self._drain_deadline is None and not self.should_exit:
            # A signal handler: only flags here; on_tick, on the server's loop, acts on them.
            self.service.draining = True
            self._drain_deadline = time.monotonic() + self.grace_s
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._drain_deadline is not None and not self.should_exit:
            if counter % 10 == 0:
                log.info("SIGTERM: draining, %d request(s) in flight", self.service.in_flight)
            if self.service.in_flight == 0 or time.monotonic() >= self._drain_deadline:
                if self.service.in_flight:
                    log.warning("shutdown grace (%gs) over with %d request(s) still in flight",
                                self.grace_s, self.service.in_flight)
                self.should_exit = True
        return await super().on_tick(counter)


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(argv)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from server.app import create_app

    server: uvicorn.Server | None = None

    def stop() -> None:
        if server is not None:
            server.should_exit = True
        # The event loop's shutdown joins its worker threads, and a stuck backend call's never
        # ends: past the graceful shutdown, exit anyway.
        threading.Thread(target=_exit_after, args=(GRACEFUL_SHUTDOWN_S + 5, app), daemon=True).start()

    try:
        app = create_app(settings, on_fatal=stop)
    except ValueError as exc:  # bad rubrics file, unreadable key file, ...
        sys.exit(f"drlaif-server: {exc}")
    log.info("serving %s on http://%s:%d", settings.model or "the embedded labeler", settings.host, settings.port)
    server = DrainingServer(uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                                           timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S),
                            app.state.service, settings.shutdown_grace_s)
    server.run()
    error = app.state.service.fatal_error
    if error is not None:
        sys.exit(f"drlaif-server: {error}")


def _exit_after(seconds: float, app) -> None:
    """Exit 1 with the app's fatal error unless the process has ended within ``seconds``."""
    time.sleep(seconds)
    print(f"drlaif-server: {app.state.service.fatal_error}", file=sys.stderr, flush=True)
    logging.shutdown()
    os._exit(1)


if __name__ == "__main__":
    main()
