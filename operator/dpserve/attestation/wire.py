"""How attestation travels on the lease protocol (sidecar -> ledger), in one place.

``POST /v1/leases`` carries the token and, in ``tee-key`` mode, the proof in headers, not in
the JSON body: the body keeps its 16 KiB limit and its schema, and a ledger without
attestation configured ignores the headers. A Trustee EAR can exceed aiohttp's default 8 KiB
header field limit, so the ledger's server must accept fields up to ``MAX_HEADER_FIELD``.
"""

from __future__ import annotations

from typing import Final

from dpserve.attestation.keys import MAX_TOKEN_BYTES

TOKEN_HEADER: Final = "X-Dpserve-Attestation"
PROOF_HEADER: Final = "X-Dpserve-Attestation-Proof"
FAILURE_REASON: Final = "AttestationFailed"  # the 403 body's "reason"
MAX_HEADER_FIELD: Final = MAX_TOKEN_BYTES + 1024
