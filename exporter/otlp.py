"""Decoding OTLP trace export requests into `RequestRecord`s.

Two encodings are read: binary protobuf (OTLP/gRPC and OTLP/HTTP `application/x-protobuf`) and
OTLP/JSON (OTLP/HTTP `application/json`).

Which spans are inference requests
    A span is a request when its name is ``llm_request`` (vLLM), or it carries a token-count
    attribute (``gen_ai.usage.prompt_tokens`` / ``completion_tokens`` / ``input_tokens`` /
    ``output_tokens``), or ``gen_ai.output.type`` is ``"image"`` or ``"video"``. Every other span is
    *ignored* (counted, not an error): vLLM's start-up spans, HTTP client spans, and so on.

What makes a request span invalid (it is *rejected*, the rest of the message is kept)
    token counts that are not whole numbers in [0, 10^9]; latencies that are negative, not finite
    or not numbers; a zero start or end time, or an end before the start; a trace id that is not
    16 bytes or a span id that is not 8 bytes; an image/video count that is not a whole number
    >= 1. In OTLP/JSON, also a trace/span id that is not hex, a time that is not an integer, and a
    malformed ``attributes`` list inside the span.

What makes the whole message unusable (`DecodeError`)
    bytes that do not parse as an ``ExportTraceServiceRequest``; for JSON, text that is not JSON,
    or containers above the span level (``resourceSpans``, ``scopeSpans``, ``spans``, a span) of
    the wrong JSON type.

Protobuf decoding speed
    The message is parsed with a *view* of the OTLP schema built at import time from the
    opentelemetry-proto descriptors: identical to the real schema except that
    ``Span.attributes`` and ``Resource.attributes`` (``repeated KeyValue``) are declared as
    ``map<string, AnyValue>``. A map entry is encoded on the wire exactly like a ``KeyValue``
    (key = field 1, value = field 2), so the bytes are the same; the parser (upb, in C) builds a
    hash table per span and the extraction looks up the dozen keys it needs instead of
    materialising a Python object for every attribute. If an attribute key repeats within a span,
    the last occurrence wins (OTLP requires keys to be unique).

Field limits
    model names are cut to 128 characters, request ids to 256.
"""

from __future__ import annotations

import binascii
import json
import math
import re
from dataclasses import dataclass, fields

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from .records import RequestRecord

__all__ = ["DecodeError", "DecodeResult", "decode_protobuf", "decode_json"]

MAX_TOKENS = 1_000_000_000
MAX_MODEL_CHARS = 128
MAX_REQUEST_ID_CHARS = 256
MAX_ERRORS = 5

_INF = math.inf
_MEDIA = frozenset(("image", "video"))

K_PROMPT = "gen_ai.usage.prompt_tokens"
K_COMPLETION = "gen_ai.usage.completion_tokens"
K_INPUT = "gen_ai.usage.input_tokens"
K_OUTPUT = "gen_ai.usage.output_tokens"
K_OUTPUT_TYPE = "gen_ai.output.type"
K_REQUEST_ID = "gen_ai.request.id"
K_RESPONSE_ID = "gen_ai.response.id"
K_RESPONSE_MODEL = "gen_ai.response.model"
K_REQUEST_MODEL = "gen_ai.request.model"
K_QUEUE = "gen_ai.latency.time_in_queue"
K_PREFILL = "gen_ai.latency.time_in_model_prefill"
K_DECODE = "gen_ai.latency.time_in_model_decode"
K_TTFT = "gen_ai.latency.time_to_first_token"
K_CHOICE_COUNT = "gen_ai.request.choice.count"
K_N = "gen_ai.request.n"
K_SERVICE_NAME = "service.name"
LLM_REQUEST = "llm_request"

# Records are built positionally (keyword construction of a slotted dataclass costs about 3x
# more, and this runs once per span); fail loudly at import if the field order ever changes.
_RECORD_FIELDS = (
    "request_id", "model", "start", "end", "prompt_tokens", "completion_tokens", "queue_s",
    "prefill_s", "decode_s", "ttft_s", "output_kind", "output_count", "trace_id", "span_id",
)
if tuple(f.name for f in fields(RequestRecord)) != _RECORD_FIELDS:  # pragma: no cover
    raise ImportError("RequestRecord fields changed; update exporter.otlp._RECORD_FIELDS and callers")


class DecodeError(ValueError):
    """The whole message is unusable (unparseable protobuf or JSON, or the wrong shape)."""


@dataclass(slots=True)
class DecodeResult:
    records: list[RequestRecord]
    rejected: int  # request spans rejected as invalid
    ignored: int  # spans that are not inference requests
    errors: list[str]  # up to MAX_ERRORS messages about rejected spans

    @property
    def spans(self) -> int:
        """All spans the message held."""
        return len(self.records) + self.rejected + self.ignored


class _Invalid(Exception):
    """One request span is invalid; the message says why."""


# --------------------------------------------------------------------------------------------
# The protobuf view: the OTLP schema with attributes as maps.

_KEYVALUE = ".opentelemetry.proto.common.v1.KeyValue"
_ANYVALUE = ".opentelemetry.proto.common.v1.AnyValue"
_MAP_ATTRIBUTES_OF = {
    "opentelemetry/proto/resource/v1/resource.proto": "Resource",
    "opentelemetry/proto/trace/v1/trace.proto": "Span",
}


def _attributes_as_map(fdp: descriptor_pb2.FileDescriptorProto, message_name: str) -> None:
    F = descriptor_pb2.FieldDescriptorProto
    msg = next(m for m in fdp.message_type if m.name == message_name)
    field = next(f for f in msg.field if f.name == "attributes")
    if field.type_name != _KEYVALUE or field.label != F.LABEL_REPEATED:
        raise ImportError(f"unexpected OTLP schema for {message_name}.attributes")
    entry = msg.nested_type.add(name="AttributesEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL, json_name="key")
    entry.field.add(
        name="value", number=2, type=F.TYPE_MESSAGE, type_name=_ANYVALUE, label=F.LABEL_OPTIONAL,
        json_name="value",
    )
    field.type_name = f".{fdp.package}.{message_name}.AttributesEntry"


def _build_view():
    from opentelemetry.proto.common.v1 import common_pb2

    kv = common_pb2.KeyValue.DESCRIPTOR
    key, value = kv.fields_by_name["key"], kv.fields_by_name["value"]
    if (key.number, value.number, value.message_type.full_name) != (
        1, 2, "opentelemetry.proto.common.v1.AnyValue"
    ):  # pragma: no cover
        raise ImportError("unexpected OTLP KeyValue layout")

    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file_descriptor) -> None:
        if file_descriptor.name in added:
            return
        for dep in file_descriptor.dependencies:
            add(dep)
        fdp = descriptor_pb2.FileDescriptorProto()
        file_descriptor.CopyToProto(fdp)
        fdp.ClearField("service")
        if file_descriptor.name in _MAP_ATTRIBUTES_OF:
            _attributes_as_map(fdp, _MAP_ATTRIBUTES_OF[file_descriptor.name])
        pool.Add(fdp)
        added.add(file_descriptor.name)

    add(trace_service_pb2.DESCRIPTOR)
    if set(_MAP_ATTRIBUTES_OF) - added:  # pragma: no cover
        raise ImportError("OTLP schema files moved")
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName(trace_service_pb2.ExportTraceServiceRequest.DESCRIPTOR.full_name)
    )


_ViewRequest = _build_view()


# --------------------------------------------------------------------------------------------
# Value checks shared by both encodings. A value arrives as (tag, python value) with tag one of
# "s" string, "i" int, "d" float, "b" bool, "" anything else / absent, "!" unreadable (JSON).

_NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _count(tag: str, val, what: str) -> int:
    if tag == "i":
        n = val
    elif tag == "d":
        if not (math.isfinite(val) and val == int(val)):
            raise _Invalid(f"{what} is not a whole number: {val!r}")
        n = int(val)
    elif tag == "s":
        s = val.strip()
        if len(s) > 32 or not _NUMBER_RE.fullmatch(s):
            raise _Invalid(f"{what} is not a number: {val[:40]!r}")
        if s.isdigit():
            n = int(s)
        else:
            f = float(s)
            if not (math.isfinite(f) and f == int(f)):
                raise _Invalid(f"{what} is not a whole number: {val!r}")
            n = int(f)
    else:
        raise _Invalid(f"{what} is not a number")
    if n < 0:
        raise _Invalid(f"{what} is negative: {n}")
    if n > MAX_TOKENS:
        raise _Invalid(f"{what} is implausibly large: {n}")
    return n


def _seconds(tag: str, val, what: str) -> float:
    if tag == "d":
        x = val
    elif tag == "i":
        x = float(val)
    else:
        raise _Invalid(f"{what} is not a number")
    if not math.isfinite(x):
        raise _Invalid(f"{what} is not finite: {x!r}")
    if x < 0.0:
        raise _Invalid(f"{what} is negative: {x!r}")
    return x


def _pb_tagged(v) -> tuple[str, object]:
    """An AnyValue as (tag, python value); the slow path, taken only for unusual values."""
    which = v.WhichOneof("value")
    if which == "int_value":
        return "i", v.int_value
    if which == "double_value":
        return "d", v.double_value
    if which == "string_value":
        return "s", v.string_value
    if which == "bool_value":
        return "b", v.bool_value
    return "", None


def _pb_count(v, what: str) -> int:
    tag, val = _pb_tagged(v)
    return _count(tag, val, what)


def _pb_seconds(v, what: str) -> float:
    tag, val = _pb_tagged(v)
    return _seconds(tag, val, what)


def _pb_media_count(a) -> int:
    if K_CHOICE_COUNT in a:
        what = K_CHOICE_COUNT
    elif K_N in a:
        what = K_N
    else:
        return 1
    n = _pb_count(a[what], what)
    if n < 1:
        raise _Invalid(f"{what} must be at least 1 for image/video output")
    return n


def _model_fallback(service_name: str, default_model: str) -> str:
    if service_name and not service_name.startswith("unknown_service"):
        return service_name[:MAX_MODEL_CHARS]
    return default_model[:MAX_MODEL_CHARS]


def _note(errors: list[str], span_id: bytes, reason: str) -> None:
    if len(errors) < MAX_ERRORS:
        errors.append(f"span {span_id.hex() or '(no id)'}: {reason}")


# --------------------------------------------------------------------------------------------
# Protobuf


def decode_protobuf(body: bytes, default_model: str) -> DecodeResult:
    """Decode a binary `ExportTraceServiceRequest`. Raises `DecodeError` if it does not parse."""
    req = _ViewRequest()
    try:
        req.ParseFromString(body)
    except Exception as exc:
        raise DecodeError(f"not a valid ExportTraceServiceRequest: {exc}") from None

    records: list[RequestRecord] = []
    append = records.append
    errors: list[str] = []
    rejected = 0
    ignored = 0
    Record = RequestRecord
    max_tokens = MAX_TOKENS
    inf = _INF

    # The hot loop. Attribute maps are probed with `in` and then indexed: upb's map `get` costs
    # about twice as much, and indexing a missing key of a message map would insert it.
    for rs in req.resource_spans:
        ra = rs.resource.attributes
        service_name = ra[K_SERVICE_NAME].string_value if K_SERVICE_NAME in ra else ""
        fallback = _model_fallback(service_name, default_model)
        for ss in rs.scope_spans:
            for span in ss.spans:
                a = span.attributes
                if K_PROMPT in a:
                    vp = a[K_PROMPT]
                elif K_INPUT in a:
                    vp = a[K_INPUT]
                else:
                    vp = None
                if K_COMPLETION in a:
                    vc = a[K_COMPLETION]
                elif K_OUTPUT in a:
                    vc = a[K_OUTPUT]
                else:
                    vc = None
                kind = a[K_OUTPUT_TYPE].string_value if K_OUTPUT_TYPE in a else ""
                if vp is None and vc is None and kind not in _MEDIA and span.name != LLM_REQUEST:
                    ignored += 1
                    continue
                sid = span.span_id
                try:
                    # Each value is read as its expected type first; a zero, negative or out of
                    # range result sends it to the checks that look at its actual type.
                    if vp is not None:
                        prompt = vp.int_value
                        if not 0 < prompt <= max_tokens:
                            prompt = _pb_count(vp, "prompt tokens")
                    else:
                        prompt = 0
                    if vc is not None:
                        completion = vc.int_value
                        if not 0 < completion <= max_tokens:
                            completion = _pb_count(vc, "completion tokens")
                    else:
                        completion = 0

                    if K_QUEUE in a:
                        v = a[K_QUEUE]
                        queue = v.double_value
                        if not 0.0 < queue < inf:
                            queue = _pb_seconds(v, K_QUEUE)
                    else:
                        queue = None
                    if K_PREFILL in a:
                        v = a[K_PREFILL]
                        prefill = v.double_value
                        if not 0.0 < prefill < inf:
                            prefill = _pb_seconds(v, K_PREFILL)
                    else:
                        prefill = None
                    if K_DECODE in a:
                        v = a[K_DECODE]
                        decode = v.double_value
                        if not 0.0 < decode < inf:
                            decode = _pb_seconds(v, K_DECODE)
                    else:
                        decode = None
                    if K_TTFT in a:
                        v = a[K_TTFT]
                        ttft = v.double_value
                        if not 0.0 < ttft < inf:
                            ttft = _pb_seconds(v, K_TTFT)
                    else:
                        ttft = None

                    tid = span.trace_id
                    if len(tid) != 16:
                        raise _Invalid(f"trace id is {len(tid)} bytes, not 16")
                    if len(sid) != 8:
                        raise _Invalid(f"span id is {len(sid)} bytes, not 8")
                    start = span.start_time_unix_nano
                    end = span.end_time_unix_nano
                    if not 0 < start <= end:
                        if start == 0 or end == 0:
                            raise _Invalid("start or end time is missing")
                        raise _Invalid("end time is before start time")

                    if kind in _MEDIA:
                        count = _pb_media_count(a)
                    else:
                        kind = "text"
                        count = 0
                except _Invalid as exc:
                    rejected += 1
                    _note(errors, sid, str(exc))
                    continue

                rid = a[K_REQUEST_ID].string_value if K_REQUEST_ID in a else ""
                if not rid:
                    rid = a[K_RESPONSE_ID].string_value if K_RESPONSE_ID in a else ""
                    if not rid:
                        rid = sid.hex()
                elif len(rid) > MAX_REQUEST_ID_CHARS:
                    rid = rid[:MAX_REQUEST_ID_CHARS]

                model = a[K_RESPONSE_MODEL].string_value if K_RESPONSE_MODEL in a else ""
                if not model:
                    model = a[K_REQUEST_MODEL].string_value if K_REQUEST_MODEL in a else ""
                if not model:
                    model = fallback
                elif len(model) > MAX_MODEL_CHARS:
                    model = model[:MAX_MODEL_CHARS]

                append(Record(
                    rid, model, start / 1e9, end / 1e9, prompt, completion,
                    queue, prefill, decode, ttft, kind, count, tid, sid,
                ))

    return DecodeResult(records, rejected, ignored, errors)


# --------------------------------------------------------------------------------------------
# OTLP/JSON
#
# Field names are read in lowerCamelCase or as the proto field name (snake_case), like protobuf's
# JSON parser; unknown fields are ignored, as the OTLP spec requires of receivers. Ids are hex;
# int64 values are JSON numbers or decimal strings. Only the attributes the decoder needs are
# converted, so a malformed value under an unrelated key does not matter.


def _jget(obj: dict, camel: str, snake: str):
    v = obj.get(camel)
    if v is None:
        v = obj.get(snake)
    return v


def _jlist(obj: dict, camel: str, snake: str, where: str) -> list:
    v = _jget(obj, camel, snake)
    if v is None:
        return []
    if not isinstance(v, list):
        raise DecodeError(f"{where}.{camel} is not a JSON array")
    return v


_INT64 = (-(2**63), 2**63 - 1)
_UINT64 = (0, 2**64 - 1)


def _jint64(v, what: str, bounds: tuple[int, int] = _INT64) -> int:
    """A JSON (u)int64: a number with an integral value, or a decimal string."""
    n = None
    if isinstance(v, bool):
        pass
    elif isinstance(v, int):
        n = v
    elif isinstance(v, float):
        if math.isfinite(v) and v == int(v):
            n = int(v)
    elif isinstance(v, str) and 0 < len(v) <= 24:
        s = v[1:] if v[0] == "-" else v
        if s.isascii() and s.isdigit():
            n = int(v)
    if n is None:
        raise _Invalid(f"{what} is not an integer: {str(v)[:40]!r}")
    if not bounds[0] <= n <= bounds[1]:
        raise _Invalid(f"{what} is out of range: {str(v)[:40]}")
    return n


def _jdouble(v):
    if isinstance(v, bool):
        return None
    try:
        if isinstance(v, (int, float)):
            return float(v)
        if isinstance(v, str):
            if v in ("NaN", "Infinity", "-Infinity"):
                return float(v)
            if len(v) <= 40 and _NUMBER_RE.fullmatch(v):
                return float(v)
    except OverflowError:  # an integer beyond the range of a double
        pass
    return None


def _jtagged(av, key: str) -> tuple[str, object]:
    """A JSON AnyValue as (tag, python value)."""
    if not isinstance(av, dict):
        return "!", None
    v = _jget(av, "stringValue", "string_value")
    if v is not None:
        return ("s", v) if isinstance(v, str) else ("!", None)
    v = _jget(av, "intValue", "int_value")
    if v is not None:
        return "i", _jint64(v, key)
    v = _jget(av, "doubleValue", "double_value")
    if v is not None:
        d = _jdouble(v)
        return ("d", d) if d is not None else ("!", None)
    v = _jget(av, "boolValue", "bool_value")
    if v is not None:
        return ("b", v) if isinstance(v, bool) else ("!", None)
    return "", None


def _jattrs(span: dict) -> dict:
    raw = span.get("attributes")
    if raw is None:
        return {}
    if not isinstance(raw, list):
        raise _Invalid("attributes is not a JSON array")
    out = {}
    for kv in raw:
        if not isinstance(kv, dict):
            raise _Invalid("attribute is not a JSON object")
        key = kv.get("key")
        if not isinstance(key, str):
            raise _Invalid("attribute key is not a string")
        out[key] = kv.get("value")
    return out


def _jstr(attrs: dict, key: str) -> str:
    av = attrs.get(key)
    if isinstance(av, dict):
        v = _jget(av, "stringValue", "string_value")
        if isinstance(v, str):
            return v
    return ""


def _jhex_id(span: dict, camel: str, snake: str, size: int, what: str) -> bytes:
    v = _jget(span, camel, snake)
    if v is None:
        v = ""
    if not isinstance(v, str):
        raise _Invalid(f"{what} is not a hex string")
    if len(v) != 2 * size:
        raise _Invalid(f"{what} is {len(v)} hex digits, not {2 * size}")
    try:
        return binascii.unhexlify(v)
    except (binascii.Error, ValueError):
        raise _Invalid(f"{what} is not hex: {v!r}") from None


def _jcount(attrs: dict, key: str, what: str) -> int:
    tag, val = _jtagged(attrs[key], key)
    return _count(tag, val, what)


def _jseconds(attrs: dict, key: str) -> float | None:
    if key not in attrs:
        return None
    tag, val = _jtagged(attrs[key], key)
    return _seconds(tag, val, key)


def _jspan(span: dict, fallback: str) -> RequestRecord | None:
    """One JSON span as a record; None if it is not an inference request."""
    attrs = _jattrs(span)
    pk = K_PROMPT if K_PROMPT in attrs else (K_INPUT if K_INPUT in attrs else None)
    ck = K_COMPLETION if K_COMPLETION in attrs else (K_OUTPUT if K_OUTPUT in attrs else None)
    kind = _jstr(attrs, K_OUTPUT_TYPE)
    if pk is None and ck is None and kind not in _MEDIA and span.get("name") != LLM_REQUEST:
        return None

    prompt = _jcount(attrs, pk, "prompt tokens") if pk is not None else 0
    completion = _jcount(attrs, ck, "completion tokens") if ck is not None else 0
    queue = _jseconds(attrs, K_QUEUE)
    prefill = _jseconds(attrs, K_PREFILL)
    decode = _jseconds(attrs, K_DECODE)
    ttft = _jseconds(attrs, K_TTFT)

    tid = _jhex_id(span, "traceId", "trace_id", 16, "trace id")
    sid = _jhex_id(span, "spanId", "span_id", 8, "span id")
    st = _jget(span, "startTimeUnixNano", "start_time_unix_nano")
    en = _jget(span, "endTimeUnixNano", "end_time_unix_nano")
    start = _jint64(st, "start time", _UINT64) if st is not None else 0
    end = _jint64(en, "end time", _UINT64) if en is not None else 0
    if not 0 < start <= end:
        if start <= 0 or end <= 0:
            raise _Invalid("start or end time is missing")
        raise _Invalid("end time is before start time")

    if kind in _MEDIA:
        ck_key = K_CHOICE_COUNT if K_CHOICE_COUNT in attrs else (K_N if K_N in attrs else None)
        if ck_key is None:
            count = 1
        else:
            count = _jcount(attrs, ck_key, ck_key)
            if count < 1:
                raise _Invalid(f"{ck_key} must be at least 1 for image/video output")
    else:
        kind = "text"
        count = 0

    rid = _jstr(attrs, K_REQUEST_ID) or _jstr(attrs, K_RESPONSE_ID) or sid.hex()
    model = _jstr(attrs, K_RESPONSE_MODEL) or _jstr(attrs, K_REQUEST_MODEL) or fallback
    return RequestRecord(
        rid[:MAX_REQUEST_ID_CHARS], model[:MAX_MODEL_CHARS], start / 1e9, end / 1e9, prompt,
        completion, queue, prefill, decode, ttft, kind, count, tid, sid,
    )


def _jspan_id_for_error(span: dict) -> bytes:
    v = _jget(span, "spanId", "span_id")
    if isinstance(v, str) and len(v) == 16:
        try:
            return binascii.unhexlify(v)
        except (binascii.Error, ValueError):
            pass
    return b""


def decode_json(body: bytes, default_model: str) -> DecodeResult:
    """Decode an OTLP/JSON `ExportTraceServiceRequest`. Raises `DecodeError` if unusable.

    A span whose ids are not valid hex (or whose fields have the wrong JSON types) is rejected
    on its own; the other spans of the message are kept.
    """
    try:
        root = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"not valid JSON: {exc}") from None
    if not isinstance(root, dict):
        raise DecodeError("the request is not a JSON object")

    records: list[RequestRecord] = []
    errors: list[str] = []
    rejected = 0
    ignored = 0
    for i, rs in enumerate(_jlist(root, "resourceSpans", "resource_spans", "request")):
        where = f"resourceSpans[{i}]"
        if not isinstance(rs, dict):
            raise DecodeError(f"{where} is not a JSON object")
        service_name = ""
        resource = rs.get("resource")
        if resource is not None:
            if not isinstance(resource, dict):
                raise DecodeError(f"{where}.resource is not a JSON object")
            try:
                service_name = _jstr(_jattrs(resource), K_SERVICE_NAME)
            except _Invalid as exc:
                raise DecodeError(f"{where}.resource: {exc}") from None
        fallback = _model_fallback(service_name, default_model)
        for j, ss in enumerate(_jlist(rs, "scopeSpans", "scope_spans", where)):
            swhere = f"{where}.scopeSpans[{j}]"
            if not isinstance(ss, dict):
                raise DecodeError(f"{swhere} is not a JSON object")
            for k, span in enumerate(_jlist(ss, "spans", "spans", swhere)):
                if not isinstance(span, dict):
                    raise DecodeError(f"{swhere}.spans[{k}] is not a JSON object")
                try:
                    rec = _jspan(span, fallback)
                except _Invalid as exc:
                    rejected += 1
                    _note(errors, _jspan_id_for_error(span), str(exc))
                    continue
                if rec is None:
                    ignored += 1
                else:
                    records.append(rec)
    return DecodeResult(records, rejected, ignored, errors)
