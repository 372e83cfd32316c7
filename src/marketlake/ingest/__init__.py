"""Getting data in: provider jobs with checkpoints (:mod:`.jobs`), CSV import
(:mod:`.csv_import`),
gap repair (:mod:`.repair`) and the ingestion scheduler (:mod:`.scheduler`)."""
