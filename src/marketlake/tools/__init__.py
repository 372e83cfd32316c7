"""Developer tools, not used by the runtime: the offline vendor mirror (:mod:`.mirror`) and
the generator of ``docs/reference`` (:mod:`.refdocs`)."""
