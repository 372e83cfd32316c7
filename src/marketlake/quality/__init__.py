"""Data quality: the rules (:mod:`.rules`), the policy and reports (:mod:`.policy`), gaps
against the exchange calendars (:mod:`.gaps`), and checks of stored data (:mod:`.checks`)."""
