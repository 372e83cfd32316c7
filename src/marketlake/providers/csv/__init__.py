"""CSV files: layout detection and block reading (:mod:`.reader`), row parsing and
checks (:mod:`.rows`)."""
