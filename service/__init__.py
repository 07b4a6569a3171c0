"""fwdprune's HTTP service: API, job store, worker and client. Imports no torch (the job runner does)."""
