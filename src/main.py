"""Kept for the seed's `python -m mlx_server.main`."""

from .app.cli import main

if __name__ == "__main__":
    main()
