"""``python -m marketlake``: the ``marketlake`` command."""

from marketlake.cli.app import main

main()
