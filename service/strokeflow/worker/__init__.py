"""Job execution: claim a job with a lease, run the analysis, store results, hand over to
dispatch (:mod:`.jobs`); re-queue jobs whose worker died (:mod:`.maintenance`); worker
processes and ``serve`` (:mod:`.runner`); leases and back-off (:mod:`.policy`)."""
