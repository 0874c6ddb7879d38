"""`python -m app`: parse settings (flags and environment), set up JSON logs, serve until drained."""

from __future__ import annotations

import sys

from app.settings import SettingsError, load_settings


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from app.logs import configure_logging
    from app.server import serve

    configure_logging(settings.log_level)
    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
