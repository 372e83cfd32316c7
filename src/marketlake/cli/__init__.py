"""The ``marketlake`` command: ``app.py`` builds it, one module per command group."""
