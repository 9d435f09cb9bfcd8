"""`drlaif-server`: run the reward server."""

from __future__ import annotations

import logging
import sys

import uvicorn

from server.config import parse_settings


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(argv)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from server.app import create_app

    server: uvicorn.Server | None = None

    def stop() -> None:
        if server is not None:
            server.should_exit = True

    try:
        app = create_app(settings, on_load_failure=stop)
    except ValueError as exc:  # bad rubrics file, unreadable key file, ...
        sys.exit(f"drlaif-server: {exc}")
    logging.getLogger("server").info("serving %s on http://%s:%d", settings.model or "the embedded labeler",
                                     settings.host, settings.port)
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port,
                                           log_level=settings.log_level, timeout_graceful_shutdown=10))
    server.run()
    error = app.state.service.load_error
    if error is not None:
        sys.exit(f"drlaif-server: the labeler failed to load: {type(error).__name__}: {error}")


if __name__ == "__main__":
    main()
