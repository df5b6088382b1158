"""walletgate: a high-throughput wallet gateway for online-game integrations.

The public Python API is small: :func:`walletgate.app.create_app` builds the ASGI app from a
:class:`walletgate.config.Config`; the ``walletgate`` command serves it with Granian.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("walletgate")
except PackageNotFoundError:  # Running from a source tree without an installed distribution.
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
