"""OTLP/JSON encoding of protobuf messages, for tests."""

import base64

from google.protobuf import json_format


def to_otlp_json(msg, *, snake_case: bool = False) -> dict:
    """OTLP/JSON as the spec defines it: camelCase, enums as ints, ids as hex."""
    d = json_format.MessageToDict(
        msg, use_integers_for_enums=True, preserving_proto_field_name=snake_case
    )

    def fix(obj):
        if isinstance(obj, dict):
            for k, v in list(obj.items()):
                if k in ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"):
                    obj[k] = base64.b64decode(v).hex()
                else:
                    fix(v)
        elif isinstance(obj, list):
            for v in obj:
                fix(v)

    fix(d)
    return d
