"""`dpserve-demo`: the operator, its ledger and private models end to end on one machine."""
