"""How each outcome of an OTLP export call is answered, on either protocol: the one table both
intake adapters render from.

======================  ====  ===================  =====  ====================================
outcome                 HTTP  gRPC                 retry  counted as rejected
======================  ====  ===================  =====  ====================================
accepted                200   OK                   -      invalid_span (spans), if any
too_large               413   RESOURCE_EXHAUSTED   -      too_large (messages)
malformed               400   INVALID_ARGUMENT     -      malformed (messages)
too_slow                408   DEADLINE_EXCEEDED    -      too_slow (messages)
unsupported_media_type  415   INVALID_ARGUMENT     -      unsupported_media_type (messages)
queue_full              503   UNAVAILABLE          yes    queue_full (spans)
shed                    503   UNAVAILABLE          yes    shed (messages)
internal                500   INTERNAL             -      internal (messages)
======================  ====  ===================  =====  ====================================

The gRPC code is also the ``code`` of the google.rpc.Status an HTTP refusal carries in its body.
"Retry" asks the sender to try again in RETRY_AFTER_S seconds: an HTTP ``Retry-After`` header, a
gRPC google.rpc.RetryInfo. An accepted message whose invalid spans were left out is answered as
accepted, with a partial_success naming them.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

__all__ = ["ACCEPTED", "Answer", "STATUS", "RETRY_AFTER_S"]

ACCEPTED = "accepted"
RETRY_AFTER_S = 1


@dataclass(frozen=True)
class Answer:
    """The status an outcome is answered with: `grpc` over OTLP/gRPC, `http` over OTLP/HTTP."""

    grpc: grpc.StatusCode
    http: int
    retry: bool = False

    @property
    def rpc_code(self) -> int:
        """The google.rpc.Code number of `grpc`."""
        return self.grpc.value[0]

    def code(self, protocol: str) -> str:
        """The answer's name as IntakeStats counts it: the HTTP status ("200") or gRPC status name ("OK")."""
        return str(self.http) if protocol == "http" else self.grpc.name


STATUS: dict[str, Answer] = {
    ACCEPTED: Answer(grpc.StatusCode.OK, 200),
    "too_large": Answer(grpc.StatusCode.RESOURCE_EXHAUSTED, 413),
    "malformed": Answer(grpc.StatusCode.INVALID_ARGUMENT, 400),
    "too_slow": Answer(grpc.StatusCode.DEADLINE_EXCEEDED, 408),
    "unsupported_media_type": Answer(grpc.StatusCode.INVALID_ARGUMENT, 415),
    "queue_full": Answer(grpc.StatusCode.UNAVAILABLE, 503, retry=True),
    "shed": Answer(grpc.StatusCode.UNAVAILABLE, 503, retry=True),
    "internal": Answer(grpc.StatusCode.INTERNAL, 500),
}
