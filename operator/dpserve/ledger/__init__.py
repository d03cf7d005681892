"""The privacy ledger: leases debited into PrivacyBudget.status before they are granted.

- :mod:`dpserve.ledger.state`: the pure decisions (grant, record_training, the status), one
  import over :mod:`limits`, :mod:`grant`, :mod:`leases`, :mod:`status`, :mod:`training`, ...
- :mod:`dpserve.ledger.store`: persistence with the resourceVersion precondition
- :mod:`dpserve.ledger.auth`: TokenReview of the sidecar's pod-bound ServiceAccount token
- :mod:`dpserve.ledger.service`: ``LedgerService`` over :mod:`handlers`, :mod:`commit`
  (group commit), :mod:`evidence` (lost-spend guard) and :mod:`connections`

See docs/ledger.md.
"""
