"""The agent: commands, bus, worker, configuration, logging and the CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("brakedisc-inspector-agent")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
