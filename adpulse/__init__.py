"""adpulse: the application shell (settings, CLI, embedded stack, simulator, demo)."""

__version__ = "0.1.0"
