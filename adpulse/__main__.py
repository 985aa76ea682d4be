"""``python -m adpulse`` is the ``adpulse`` command."""

from adpulse.cli import main

main()
