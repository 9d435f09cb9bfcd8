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

    try:
        app = create_app(settings)
    except ValueError as exc:  # bad rubrics file, unreadable key file, ...
        sys.exit(f"drlaif-server: {exc}")
    logging.getLogger("drlaif").info("serving on http://%s:%d", settings.host, settings.port)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                timeout_graceful_shutdown=10)
    if app.state.service.load_error is not None:
        sys.exit(1)


if __name__ == "__main__":
    main()
