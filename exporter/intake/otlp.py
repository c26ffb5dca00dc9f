"""Decoding OTLP trace export requests into a `RequestBatch`: one row per request span.

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
    >= 1; an end more than `MAX_FUTURE_S` after the receiver's clock (`reject_future`, applied by
    the intake: such a request would stay pending until then). In OTLP/JSON, also a trace/span id that is not hex, a time that is not an integer, and a
    malformed ``attributes`` list inside the span.

What makes the whole message unusable (`DecodeError`)
    protobuf that is not well-formed: a truncated or overlong varint, a length past the end of
    its message, a group or an invalid wire type, a field this decoder reads arriving with
    another wire type than the schema's, invalid UTF-8 in a string it turns into text (request
    ids, model names, ``service.name``, pod names, token counts written as strings). Fields it does not read
    are skipped by their wire type without being looked into. For JSON: text that is not JSON, or
    containers above the span level (``resourceSpans``, ``scopeSpans``, ``spans``, a span) of the
    wrong JSON type.

Model and request id
    The model is ``gen_ai.response.model``, else ``gen_ai.request.model``, else the resource's
    ``service.name`` unless it is OpenTelemetry's ``unknown_service...`` default, else the
    configured default model; cut to 128 characters. The request id is ``gen_ai.request.id``,
    else ``gen_ai.response.id``, else the span id in hex; cut to 256 characters. If an attribute
    key repeats within a span, the last occurrence wins (OTLP requires keys to be unique).

Pod
    The Kubernetes pod that served a span comes from its resource: ``k8s.namespace.name`` and
    ``k8s.pod.name`` as ``namespace/name`` (``name`` alone without a namespace; each part cut to
    253 characters); a resource without ``k8s.pod.name`` names no pod. Node mode places each
    request on the GPUs its pod holds.

Protobuf decoding speed
    Protobuf is read by a C extension (`_otlpwire`, exporter/intake/_otlpwire.c) that walks the wire
    format once and writes each request span as one fixed-size row straight into the buffer that
    becomes the batch's numpy array (`records.REQUEST_DTYPE`); the only Python object made per
    span is its request id. The batch's rows are then a read-only view of that buffer. The JSON
    decoder is Python and applies the same rules.
"""

from __future__ import annotations

import binascii
import json
import math
import re
from dataclasses import dataclass

import numpy as np

from jouletrace.exporter.intake import _otlpwire
from jouletrace.exporter.ledger.records import REQUEST_DTYPE, RequestBatch, RequestRecord

__all__ = ["DecodeError", "DecodeResult", "decode_protobuf", "decode_json", "reject_future"]

MAX_TOKENS = _otlpwire.MAX_TOKENS  # 10**9
MAX_MODEL_CHARS = _otlpwire.MAX_MODEL_CHARS  # 128
MAX_REQUEST_ID_CHARS = _otlpwire.MAX_REQUEST_ID_CHARS  # 256
MAX_ERRORS = _otlpwire.MAX_ERRORS  # 5
MAX_POD_NAME_CHARS = _otlpwire.MAX_POD_NAME_CHARS  # 253
MAX_FUTURE_S = 300.0  # clock skew tolerated between sender and receiver, s

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
K_POD_NAME = "k8s.pod.name"
K_POD_NAMESPACE = "k8s.namespace.name"
LLM_REQUEST = "llm_request"


def _check_row_layout() -> None:
    """The C decoder writes rows of REQUEST_DTYPE; fail at import if the two ever drift apart."""
    ok = _otlpwire.ROW_SIZE == REQUEST_DTYPE.itemsize
    for name, offset, size in _otlpwire.ROW_LAYOUT:
        dt, off = REQUEST_DTYPE.fields[name][:2]
        ok = ok and off == offset and dt.itemsize == size and dt.byteorder in ("<", "|", "=")
    if not ok or not np.little_endian:  # pragma: no cover
        raise ImportError("exporter._otlpwire rows do not match records.REQUEST_DTYPE; rebuild it")


_check_row_layout()


class DecodeError(ValueError):
    """The whole message is unusable (unparseable protobuf or JSON, or the wrong shape)."""


@dataclass(slots=True)
class DecodeResult:
    batch: RequestBatch  # the accepted request spans
    rejected: int  # request spans rejected as invalid
    ignored: int  # spans that are not inference requests
    errors: list[str]  # up to MAX_ERRORS messages about rejected spans

    @property
    def spans(self) -> int:
        """All spans the message held."""
        return len(self.batch) + self.rejected + self.ignored


def reject_future(result: DecodeResult, now: float) -> DecodeResult:
    """`result` less the request spans ending more than MAX_FUTURE_S after `now` (Unix s), which
    are counted as rejected."""
    future = result.batch.rows["end"] > now + MAX_FUTURE_S
    if not future.any():
        return result
    errors = list(result.errors)
    kept = []
    for rec, late in zip(result.batch.records(), future):
        if late:
            _note(errors, rec.span_id, f"end time is {rec.end - now:.0f} s in the future")
        else:
            kept.append(rec)
    return DecodeResult(RequestBatch.from_records(kept), result.rejected + int(future.sum()), result.ignored, errors)


# --------------------------------------------------------------------------------------------
# Protobuf


def decode_protobuf(body, default_model: str) -> DecodeResult:
    """Decode a binary `ExportTraceServiceRequest` (any bytes-like object). Raises `DecodeError`
    if it is malformed. The batch's rows are a read-only view of the decoder's buffer."""
    try:
        rows, models, pods, request_ids, rejected, ignored, errors = _otlpwire.decode(body, default_model)
    except ValueError as exc:
        raise DecodeError(f"not a valid ExportTraceServiceRequest: {exc}") from None
    batch = RequestBatch(np.frombuffer(rows, REQUEST_DTYPE), models, request_ids, pods)
    return DecodeResult(batch, rejected, ignored, errors)


# --------------------------------------------------------------------------------------------
# Value checks of the JSON decoder, the same as the C decoder's. A value arrives as (tag, python
# value) with tag one of "s" string, "i" int, "d" float, "b" bool, "" anything else / absent,
# "!" unreadable.


class _Invalid(Exception):
    """One request span is invalid; the message says why."""


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


def _model_fallback(service_name: str, default_model: str) -> str:
    if service_name and not service_name.startswith("unknown_service"):
        return service_name[:MAX_MODEL_CHARS]
    return default_model[:MAX_MODEL_CHARS]


def _note(errors: list[str], span_id: bytes, reason: str) -> None:
    if len(errors) < MAX_ERRORS:
        errors.append(f"span {span_id.hex() or '(no id)'}: {reason}")


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
        key = kv.get("key", "")  # an omitted field holds its default, as in protobuf
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


def _pod_of(resource_attrs: dict) -> str:
    name = _jstr(resource_attrs, K_POD_NAME)[:MAX_POD_NAME_CHARS]
    space = _jstr(resource_attrs, K_POD_NAMESPACE)[:MAX_POD_NAME_CHARS]
    return f"{space}/{name}" if name and space else name


def _jspan(span: dict, fallback: str, pod: str) -> RequestRecord | None:
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
        request_id=rid[:MAX_REQUEST_ID_CHARS], model=model[:MAX_MODEL_CHARS], start=start / 1e9,
        end=end / 1e9, prompt_tokens=prompt, completion_tokens=completion, queue_s=queue,
        prefill_s=prefill, decode_s=decode, ttft_s=ttft, output_kind=kind, output_count=count,
        trace_id=tid, span_id=sid, pod=pod,
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
        resource_attrs = {}
        resource = rs.get("resource")
        if resource is not None:
            if not isinstance(resource, dict):
                raise DecodeError(f"{where}.resource is not a JSON object")
            try:
                resource_attrs = _jattrs(resource)
            except _Invalid as exc:
                raise DecodeError(f"{where}.resource: {exc}") from None
        service_name = _jstr(resource_attrs, K_SERVICE_NAME)
        pod = _pod_of(resource_attrs)
        fallback = _model_fallback(service_name, default_model)
        for j, ss in enumerate(_jlist(rs, "scopeSpans", "scope_spans", where)):
            swhere = f"{where}.scopeSpans[{j}]"
            if not isinstance(ss, dict):
                raise DecodeError(f"{swhere} is not a JSON object")
            for k, span in enumerate(_jlist(ss, "spans", "spans", swhere)):
                if not isinstance(span, dict):
                    raise DecodeError(f"{swhere}.spans[{k}] is not a JSON object")
                try:
                    rec = _jspan(span, fallback, pod)
                except _Invalid as exc:
                    rejected += 1
                    _note(errors, _jspan_id_for_error(span), str(exc))
                    continue
                if rec is None:
                    ignored += 1
                else:
                    records.append(rec)
    return DecodeResult(RequestBatch.from_records(records), rejected, ignored, errors)
