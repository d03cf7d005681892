"""Remote attestation of the pods that ask for leases (``spec.confidential.attestation``).

- :mod:`~dpserve.attestation.spec`: the API model (verifier keys, required claims, freshness,
  pod binding, the in-guest agent's URL);
- :mod:`~dpserve.attestation.keys`: the JWK Set, the algorithm allow-list, signature checks;
- :mod:`~dpserve.attestation.claims`: JSON Pointers into the token, the claim checks;
- :mod:`~dpserve.attestation.binding`: tying a token to the requesting pod;
- :mod:`~dpserve.attestation.verifier`: ``verify(token, spec, jwks, now=, lease=) -> Verdict``.

Pure code, no I/O: the ledger fetches the keys and calls :func:`verify`; the sidecar
(``dpserve_runtime.filter.attestation``) obtains the token and signs the proofs.
"""

from dpserve.attestation.binding import binding_digest
from dpserve.attestation.keys import Jwks, JwksError, load_jwks
from dpserve.attestation.spec import AttestationSpec
from dpserve.attestation.verifier import FAILURE_REASONS, LeaseContext, Verdict, verify

__all__ = [
    "FAILURE_REASONS",
    "AttestationSpec",
    "Jwks",
    "JwksError",
    "LeaseContext",
    "Verdict",
    "binding_digest",
    "load_jwks",
    "verify",
]
