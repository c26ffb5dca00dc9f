"""Decoding OTLP trace export requests (protobuf and OTLP/JSON) into RequestBatches, and the C
protobuf decoder's safety on hostile input."""

from __future__ import annotations

import base64
import copy
import gc
import json
import math
import struct
import sys
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jouletrace.exporter.intake.otlp import DecodeError, decode_json, decode_protobuf
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from otlp_json import to_otlp_json

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "vllm-0.32.0-cpu-llm_request.otlp.pb"

DEFAULT_MODEL = "fallback-model"
T0 = 1_795_757_249_362_395_904


def fixture_bytes() -> bytes:
    return FIXTURE.read_bytes()


def fixture_message() -> trace_service_pb2.ExportTraceServiceRequest:
    msg = trace_service_pb2.ExportTraceServiceRequest()
    msg.ParseFromString(fixture_bytes())
    return msg



def set_attr(span, key, value) -> None:
    kv = span.attributes.add(key=key)
    if isinstance(value, bool):
        kv.value.bool_value = value
    elif isinstance(value, int):
        kv.value.int_value = value
    elif isinstance(value, float):
        kv.value.double_value = value
    elif isinstance(value, str):
        kv.value.string_value = value
    elif value is None:
        pass  # a KeyValue with no value
    else:
        raise TypeError(value)


def make_request(spans: list[dict], service_name: str | None = None):
    """An ExportTraceServiceRequest holding one resource, one scope and the given spans.

    Each span dict: attrs (dict), and optionally name, trace_id, span_id, start, end.
    """
    msg = trace_service_pb2.ExportTraceServiceRequest()
    rs = msg.resource_spans.add()
    if service_name is not None:
        kv = rs.resource.attributes.add(key="service.name")
        kv.value.string_value = service_name
    ss = rs.scope_spans.add()
    ss.scope.name = "test"
    for i, s in enumerate(spans):
        span = ss.spans.add()
        span.name = s.get("name", "chat")
        span.trace_id = s.get("trace_id", bytes([i + 1]) * 16)
        span.span_id = s.get("span_id", bytes([i + 1]) * 8)
        span.kind = trace_pb2.Span.SPAN_KIND_CLIENT
        span.start_time_unix_nano = s.get("start", T0 + i * 1_000_000_000)
        span.end_time_unix_nano = s.get("end", T0 + i * 1_000_000_000 + 500_000_000)
        for k, v in s.get("attrs", {}).items():
            set_attr(span, k, v)
    return msg


def decode_both(msg, default_model: str = DEFAULT_MODEL):
    """Decode a message through protobuf and OTLP/JSON; both must agree."""
    a = decode_protobuf(msg.SerializeToString(), default_model)
    b = decode_json(json.dumps(to_otlp_json(msg)).encode(), default_model)
    assert a.batch.records() == b.batch.records()
    assert a.batch.rows.tobytes() == b.batch.rows.tobytes()  # NaNs and padding too
    assert a.batch.models == b.batch.models and a.batch.request_ids == b.batch.request_ids
    assert a.batch.pods == b.batch.pods
    assert (a.rejected, a.ignored) == (b.rejected, b.ignored)
    assert len(a.errors) == len(b.errors)
    for ea, eb in zip(a.errors, b.errors):
        # "span <id>: <reason>". A malformed id is named, and judged, as bytes in protobuf and as
        # hex digits in JSON; every other reason reads the same.
        (ida, ra), (idb, rb) = ea.split(": ", 1), eb.split(": ", 1)
        if " id is " not in ra:
            assert ra == rb
        if ida != idb:
            assert idb == "span (no id)"
    return a


def genai_span(**attrs) -> dict:
    base = {
        "gen_ai.usage.input_tokens": 100,
        "gen_ai.usage.output_tokens": 20,
        "gen_ai.request.model": "llama-3.1-8b",
        "gen_ai.response.id": "resp-1",
    }
    base.update(attrs)
    return {"attrs": {k: v for k, v in base.items() if v is not ...}}


# ------------------------------------------------------------------------------------------
# The real vLLM payload


def expected_fixture_values():
    """(request_id, start, end, prompt, completion, queue, prefill, decode, ttft, tid, sid) per
    llm_request span, read with the official protobuf classes."""
    out = []
    for rs in fixture_message().resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                if span.name != "llm_request":
                    continue
                a = {kv.key: kv.value for kv in span.attributes}
                out.append((
                    a["gen_ai.request.id"].string_value,
                    span.start_time_unix_nano / 1e9,
                    span.end_time_unix_nano / 1e9,
                    a["gen_ai.usage.prompt_tokens"].int_value,
                    a["gen_ai.usage.completion_tokens"].int_value,
                    a["gen_ai.latency.time_in_queue"].double_value,
                    a["gen_ai.latency.time_in_model_prefill"].double_value,
                    a["gen_ai.latency.time_in_model_decode"].double_value,
                    a["gen_ai.latency.time_to_first_token"].double_value,
                    span.trace_id,
                    span.span_id,
                ))
    return out


def check_fixture_result(res) -> None:
    assert res.rejected == 0
    assert res.ignored == 2
    assert res.errors == []
    recs = res.batch.records()
    assert len(recs) == 3
    assert [r.request_id for r in recs] == ["chatcmpl-req1", "chatcmpl-req2", "chatcmpl-req3"]
    assert [(r.prompt_tokens, r.completion_tokens) for r in recs] == [(18, 32), (18, 26), (18, 32)]
    for rec, exp in zip(recs, expected_fixture_values()):
        rid, start, end, p, c, queue, prefill, decode, ttft, tid, sid = exp
        assert rec.request_id == rid
        assert rec.start == start and rec.end == end
        assert (rec.prompt_tokens, rec.completion_tokens) == (p, c)
        assert rec.queue_s == queue
        assert rec.prefill_s == prefill
        assert rec.decode_s == decode
        assert rec.ttft_s == ttft
        assert rec.trace_id == tid and len(rec.trace_id) == 16
        assert rec.span_id == sid and len(rec.span_id) == 8
        assert rec.model == DEFAULT_MODEL  # service.name is unknown_service:python
        assert rec.output_kind == "text" and rec.output_count == 0
        assert rec.start < rec.end
    # spot-check against the values printed from the capture
    assert recs[0].ttft_s == pytest.approx(0.027300834655761719)
    assert recs[1].decode_s == pytest.approx(0.089363653000077647)
    assert recs[2].start == pytest.approx(1795757249.715794432)


def test_fixture_protobuf():
    check_fixture_result(decode_protobuf(fixture_bytes(), DEFAULT_MODEL))


def test_fixture_json_camel_case():
    body = json.dumps(to_otlp_json(fixture_message())).encode()
    assert b'"traceId": "0af7651916cd43dd8448eb211c803191"' in body  # hex, not base64
    check_fixture_result(decode_json(body, DEFAULT_MODEL))


def test_fixture_json_snake_case():
    body = json.dumps(to_otlp_json(fixture_message(), snake_case=True)).encode()
    assert b'"resource_spans"' in body and b'"start_time_unix_nano"' in body
    check_fixture_result(decode_json(body, DEFAULT_MODEL))


def test_fixture_json_int64_as_numbers_and_strings():
    d = to_otlp_json(fixture_message())
    spans = d["resourceSpans"][0]["scopeSpans"][1]["spans"]
    assert isinstance(spans[0]["startTimeUnixNano"], str)  # MessageToDict writes int64 as strings
    for span in spans:
        span["startTimeUnixNano"] = int(span["startTimeUnixNano"])
        for kv in span["attributes"]:
            if "intValue" in kv["value"]:
                kv["value"]["intValue"] = int(kv["value"]["intValue"])
    check_fixture_result(decode_json(json.dumps(d).encode(), DEFAULT_MODEL))


def test_fixture_json_ignores_unknown_fields():
    d = to_otlp_json(fixture_message())
    d["somethingNew"] = {"x": 1}
    d["resourceSpans"][0]["scopeSpans"][1]["spans"][0]["futureField"] = [1, 2]
    check_fixture_result(decode_json(json.dumps(d).encode(), DEFAULT_MODEL))


def test_service_name_is_the_model_unless_unknown():
    msg = fixture_message()
    for kv in msg.resource_spans[0].resource.attributes:
        if kv.key == "service.name":
            kv.value.string_value = "llama-serve"
    res = decode_both(msg)
    assert [r.model for r in res.batch.records()] == ["llama-serve"] * 3


# ------------------------------------------------------------------------------------------
# OpenTelemetry GenAI conventions and field rules


def test_genai_span_decodes():
    res = decode_both(make_request([genai_span()], service_name="svc"))
    assert res.rejected == 0 and res.ignored == 0
    (rec,) = res.batch.records()
    assert rec.request_id == "resp-1"
    assert rec.model == "llama-3.1-8b"
    assert (rec.prompt_tokens, rec.completion_tokens) == (100, 20)
    assert rec.start == T0 / 1e9 and rec.end == (T0 + 500_000_000) / 1e9
    assert (rec.queue_s, rec.prefill_s, rec.decode_s, rec.ttft_s) == (None, None, None, None)
    assert rec.trace_id == b"\x01" * 16 and rec.span_id == b"\x01" * 8


def test_model_precedence_and_truncation():
    spans = [
        genai_span(**{"gen_ai.response.model": "resp-model"}),
        genai_span(),
        genai_span(**{"gen_ai.request.model": ...}),
        genai_span(**{"gen_ai.request.model": "m" * 300}),
    ]
    res = decode_both(make_request(spans, service_name="unknown_service:foo"))
    assert [r.model for r in res.batch.records()] == ["resp-model", "llama-3.1-8b", DEFAULT_MODEL, "m" * 128]
    res = decode_both(make_request([genai_span(**{"gen_ai.request.model": ...})]), "d" * 200)
    assert res.batch.records()[0].model == "d" * 128


def test_request_id_precedence():
    spans = [
        genai_span(**{"gen_ai.request.id": "req-a"}),
        genai_span(),
        {"attrs": {"gen_ai.usage.input_tokens": 1}, "span_id": bytes.fromhex("0011223344556677")},
    ]
    res = decode_both(make_request(spans))
    assert [r.request_id for r in res.batch.records()] == ["req-a", "resp-1", "0011223344556677"]


def test_request_detection_and_ignored_spans():
    spans = [
        {"name": "llm_request", "attrs": {}},  # vLLM name alone makes it a request
        {"name": "GET /health", "attrs": {"http.method": "GET"}},
        {"name": "x", "attrs": {"gen_ai.output.type": "text"}},  # text output, no tokens
        {"name": "x", "attrs": {"gen_ai.usage.output_tokens": 5}},
        {"name": "x", "attrs": {"gen_ai.output.type": "image"}},
        {"name": "x", "attrs": {"gen_ai.request.model": "m"}},  # model alone: not a request
    ]
    res = decode_both(make_request(spans))
    assert res.ignored == 3
    assert res.rejected == 0
    assert len(res.batch.records()) == 3
    assert [(r.prompt_tokens, r.completion_tokens) for r in res.batch.records()] == [(0, 0), (0, 5), (0, 0)]
    assert [r.output_kind for r in res.batch.records()] == ["text", "text", "image"]


def test_vllm_names_win_over_genai_names():
    span = genai_span(**{"gen_ai.usage.prompt_tokens": 7, "gen_ai.usage.completion_tokens": 8})
    (rec,) = decode_both(make_request([span])).batch.records()
    assert (rec.prompt_tokens, rec.completion_tokens) == (7, 8)


def test_token_values_that_are_accepted():
    spans = [
        genai_span(**{"gen_ai.usage.input_tokens": 0, "gen_ai.usage.output_tokens": 0}),
        genai_span(**{"gen_ai.usage.input_tokens": 12.0, "gen_ai.usage.output_tokens": "34"}),
        genai_span(**{"gen_ai.usage.input_tokens": " 56 ", "gen_ai.usage.output_tokens": "7.0"}),
        genai_span(**{"gen_ai.usage.input_tokens": 1_000_000_000, "gen_ai.usage.output_tokens": 300}),
    ]
    res = decode_both(make_request(spans))
    assert res.rejected == 0, res.errors
    assert [(r.prompt_tokens, r.completion_tokens) for r in res.batch.records()] == [
        (0, 0), (12, 34), (56, 7), (1_000_000_000, 300),
    ]
    assert all(isinstance(r.prompt_tokens, int) and isinstance(r.completion_tokens, int) for r in res.batch.records())


def test_latencies_read_and_ints_accepted():
    span = genai_span(**{
        "gen_ai.latency.time_in_queue": 0.0,
        "gen_ai.latency.time_in_model_prefill": 2,
        "gen_ai.latency.time_in_model_decode": 0.25,
        "gen_ai.latency.time_to_first_token": 0.125,
    })
    (rec,) = decode_both(make_request([span])).batch.records()
    assert (rec.queue_s, rec.prefill_s, rec.decode_s, rec.ttft_s) == (0.0, 2.0, 0.25, 0.125)
    assert isinstance(rec.prefill_s, float)


@pytest.mark.parametrize(
    ("attrs", "fields", "fragment"),
    [
        ({"gen_ai.usage.input_tokens": -1}, {}, "negative"),
        ({"gen_ai.usage.output_tokens": 2.5}, {}, "whole number"),
        ({"gen_ai.usage.output_tokens": "many"}, {}, "not a number"),
        ({"gen_ai.usage.output_tokens": "-3"}, {}, "negative"),
        ({"gen_ai.usage.output_tokens": True}, {}, "not a number"),
        ({"gen_ai.usage.output_tokens": None}, {}, "not a number"),
        ({"gen_ai.usage.input_tokens": 1_000_000_001}, {}, "large"),
        ({"gen_ai.usage.input_tokens": math.inf}, {}, "whole number"),
        ({"gen_ai.latency.time_in_queue": -0.5}, {}, "negative"),
        ({"gen_ai.latency.time_to_first_token": math.nan}, {}, "not finite"),
        ({"gen_ai.latency.time_in_model_decode": math.inf}, {}, "not finite"),
        ({"gen_ai.latency.time_in_model_prefill": "0.1"}, {}, "not a number"),
        ({"gen_ai.latency.time_in_model_prefill": -4}, {}, "negative"),
        ({}, {"end": T0 - 1}, "before start"),
        ({}, {"start": 0}, "missing"),
        ({}, {"end": 0}, "missing"),
        ({}, {"trace_id": b"\x01" * 8}, "trace id"),
        ({}, {"trace_id": b""}, "trace id"),
        ({}, {"span_id": b"\x01" * 16}, "span id"),
        ({"gen_ai.output.type": "image", "gen_ai.request.n": 0}, {}, "at least 1"),
        ({"gen_ai.output.type": "video", "gen_ai.request.choice.count": 1.5}, {}, "whole number"),
    ],
)
def test_invalid_span_rejected_good_spans_kept(attrs, fields, fragment):
    bad = genai_span(**attrs)
    bad.update(fields)
    bad["span_id"] = fields.get("span_id", bytes.fromhex("badbadbadbadbad0"))
    bad.setdefault("start", T0)
    good1 = genai_span(**{"gen_ai.request.id": "good-1"})
    good2 = genai_span(**{"gen_ai.request.id": "good-2"})
    res = decode_both(make_request([good1, bad, good2]))
    assert res.rejected == 1
    assert [r.request_id for r in res.batch.records()] == ["good-1", "good-2"]
    assert len(res.errors) == 1
    assert fragment in res.errors[0]
    if "span_id" not in fields:
        assert "badbadbadbadbad0" in res.errors[0]


def test_error_messages_are_capped():
    spans = [genai_span(**{"gen_ai.usage.input_tokens": -i - 1}) for i in range(12)]
    res = decode_both(make_request(spans))
    assert res.rejected == 12
    assert res.batch.records() == []
    assert 1 <= len(res.errors) <= 5


def test_diffusion_outputs():
    spans = [
        {"attrs": {"gen_ai.output.type": "image", "gen_ai.request.choice.count": 4, "gen_ai.request.model": "sdxl"}},
        {"attrs": {"gen_ai.output.type": "video", "gen_ai.request.n": 2}},
        {"attrs": {"gen_ai.output.type": "image"}},
        {"attrs": {"gen_ai.output.type": "text", "gen_ai.usage.output_tokens": 3, "gen_ai.request.n": 2}},
    ]
    res = decode_both(make_request(spans))
    assert res.rejected == 0
    assert [(r.output_kind, r.output_count) for r in res.batch.records()] == [
        ("image", 4), ("video", 2), ("image", 1), ("text", 0),
    ]
    assert res.batch.records()[0].model == "sdxl"


def test_duplicate_attribute_key_last_wins():
    msg = make_request([genai_span()])
    span = msg.resource_spans[0].scope_spans[0].spans[0]
    set_attr(span, "gen_ai.usage.output_tokens", 99)
    (rec,) = decode_protobuf(msg.SerializeToString(), DEFAULT_MODEL).batch.records()
    assert rec.completion_tokens == 99
    (rec,) = decode_json(json.dumps(to_otlp_json(msg)).encode(), DEFAULT_MODEL).batch.records()
    assert rec.completion_tokens == 99


def test_several_resources_and_scopes():
    msg = fixture_message()
    extra = make_request([genai_span(**{"gen_ai.request.id": "other"})], service_name="svc-b")
    msg.resource_spans.extend(extra.resource_spans)
    res = decode_both(msg)
    assert [r.request_id for r in res.batch.records()] == [
        "chatcmpl-req1", "chatcmpl-req2", "chatcmpl-req3", "other",
    ]
    assert res.batch.records()[3].model == "llama-3.1-8b"
    assert res.spans == 6


def with_resource(msg, **attrs):
    for k, v in attrs.items():
        set_attr(msg.resource_spans[0].resource, k, v)
    return msg


def test_pod_comes_from_resource_attributes():
    pod = {"k8s.pod.name": "llama-7f9c-abcde", "k8s.namespace.name": "serving"}
    msg = with_resource(make_request([genai_span(), genai_span()], service_name="svc"), **pod)
    msg.resource_spans.extend(with_resource(make_request([genai_span()]), **{"k8s.pod.name": "bare"}).resource_spans)
    msg.resource_spans.extend(make_request([genai_span()]).resource_spans)  # no pod
    msg.resource_spans.extend(with_resource(make_request([genai_span()]), **{"k8s.namespace.name": "x"}).resource_spans)
    res = decode_both(msg)
    assert res.batch.pods == ["serving/llama-7f9c-abcde", "bare"]
    assert res.batch.rows["pod"].tolist() == [0, 0, 1, -1, -1]
    assert [r.pod for r in res.batch.records()] == ["serving/llama-7f9c-abcde"] * 2 + ["bare", "", ""]


def test_pod_names_are_cut_and_must_be_utf8():
    res = decode_both(with_resource(make_request([genai_span()]), **{"k8s.pod.name": "p" * 300,
                                                                      "k8s.namespace.name": "n" * 300}))
    assert res.batch.pods == ["n" * 253 + "/" + "p" * 253]
    bad = request_of_spans(raw_span(kv("gen_ai.usage.prompt_tokens", ival(3))),
                           resource=ld(1, kv("k8s.pod.name", sval(b"\xff\xfe"))))
    with pytest.raises(DecodeError, match="invalid UTF-8 in k8s.pod.name"):
        decode_protobuf(bad, DEFAULT_MODEL)


# ------------------------------------------------------------------------------------------
# Malformed messages


def test_empty_messages_are_fine():
    for res in (decode_protobuf(b"", DEFAULT_MODEL), decode_json(b"{}", DEFAULT_MODEL),
                decode_json(b'{"resourceSpans": []}', DEFAULT_MODEL)):
        assert (res.batch.records(), res.rejected, res.ignored, res.errors) == ([], 0, 0, [])


@pytest.mark.parametrize("body", [b"\xff\xff\xff\xff", b"\x0a\x05\x01", fixture_bytes()[:-7], b"not protobuf at all"])
def test_garbage_protobuf(body):
    with pytest.raises(DecodeError) as exc:
        decode_protobuf(body, DEFAULT_MODEL)
    assert "ExportTraceServiceRequest" in str(exc.value)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"resourceSpans": {}}', "not a JSON array"),
        (b'{"resourceSpans": [3]}', "not a JSON object"),
        (b'{"resourceSpans": [{"scopeSpans": "x"}]}', "not a JSON array"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [7]}]}]}', "not a JSON object"),
        (b'{"resourceSpans": [{"resource": [], "scopeSpans": []}]}', "not a JSON object"),
    ],
)
def test_malformed_json(body, fragment):
    with pytest.raises(DecodeError) as exc:
        decode_json(body, DEFAULT_MODEL)
    assert fragment in str(exc.value)


def _json_with_span_edit(edit):
    msg = make_request([
        genai_span(**{"gen_ai.request.id": "good-1"}),
        genai_span(**{"gen_ai.request.id": "bad"}),
        genai_span(**{"gen_ai.request.id": "good-2"}),
    ])
    d = to_otlp_json(msg)
    edit(d["resourceSpans"][0]["scopeSpans"][0]["spans"][1])
    return json.dumps(d).encode()


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda s: s.update(traceId="zz" * 16), "not hex"),
        (lambda s: s.update(spanId="0x12345678901234"), "not hex"),
        (lambda s: s.update(traceId=base64.b64encode(b"\x01" * 16).decode()), "hex digits"),
        (lambda s: s.update(spanId=12345), "not a hex string"),
        (lambda s: s.pop("traceId"), "hex digits"),
        (lambda s: s.update(startTimeUnixNano="soon"), "not an integer"),
        (lambda s: s.update(endTimeUnixNano=1.5), "not an integer"),
        (lambda s: s.update(attributes={"a": 1}), "attributes"),
        (lambda s: s.update(attributes=[["key", "value"]]), "attribute"),
        (lambda s: s["attributes"].append({"key": 5, "value": {}}), "key"),
        (lambda s: s["attributes"].append(
            {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "12x"}}), "not an integer"),
        (lambda s: s["attributes"].append(
            {"key": "gen_ai.usage.input_tokens", "value": {"doubleValue": "lots"}}), "not a number"),
        (lambda s: s["attributes"].append(
            {"key": "gen_ai.usage.input_tokens", "value": "12"}), "not a number"),
        (lambda s: s["attributes"].append(
            {"key": "gen_ai.usage.input_tokens", "value": {"intValue": 2**64}}), "out of range"),
        (lambda s: s["attributes"].append(
            {"key": "gen_ai.latency.time_in_queue", "value": {"intValue": 10**400}}), "out of range"),
        (lambda s: s["attributes"].append(
            {"key": "gen_ai.latency.time_in_queue", "value": {"doubleValue": 10**400}}), "not a number"),
        (lambda s: s.update(startTimeUnixNano=-5), "out of range"),
        (lambda s: s.update(endTimeUnixNano=10**30), "out of range"),
    ],
)
def test_json_bad_span_rejected_alone(edit, fragment):
    res = decode_json(_json_with_span_edit(edit), DEFAULT_MODEL)
    assert res.rejected == 1
    assert [r.request_id for r in res.batch.records()] == ["good-1", "good-2"]
    assert len(res.errors) == 1 and fragment in res.errors[0]


def test_json_value_encodings():
    def edit(s):
        s["attributes"] = [
            {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "40"}},
            {"key": "gen_ai.usage.output_tokens", "value": {"int_value": 41}},
            {"key": "gen_ai.latency.time_in_queue", "value": {"doubleValue": "0.5"}},
            {"key": "gen_ai.latency.time_to_first_token", "value": {"double_value": 1}},
            {"key": "gen_ai.request.id", "value": {"string_value": "snake"}},
            {"key": "unrelated", "value": {"intValue": "not checked"}},
            {"key": "also.unrelated", "value": {"kvlistValue": {"values": []}}},
        ]
    res = decode_json(_json_with_span_edit(edit), DEFAULT_MODEL)
    assert res.rejected == 0, res.errors
    rec = res.batch.records()[1]
    assert rec.request_id == "snake"
    assert (rec.prompt_tokens, rec.completion_tokens, rec.queue_s, rec.ttft_s) == (40, 41, 0.5, 1.0)


def test_json_nan_double_rejected():
    def edit(s):
        s["attributes"].append({"key": "gen_ai.latency.time_in_queue", "value": {"doubleValue": "NaN"}})
    res = decode_json(_json_with_span_edit(edit), DEFAULT_MODEL)
    assert res.rejected == 1 and "not finite" in res.errors[0]


def test_protobuf_and_json_agree_on_a_mixed_batch():
    msg = fixture_message()
    extra = make_request([
        genai_span(**{"gen_ai.usage.input_tokens": -5}),
        genai_span(**{"gen_ai.output.type": "image"}),
        {"name": "noise", "attrs": {"x": 1}},
    ])
    msg.resource_spans.extend(extra.resource_spans)
    res = decode_both(copy.deepcopy(msg))
    assert (len(res.batch.records()), res.rejected, res.ignored) == (4, 1, 3)


# ------------------------------------------------------------------------------------------
# Properties


_VALUE = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=-3, max_value=2_000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 1.0, 2.5, 1e9, 1e9 + 1, -0.0]),
    st.text(max_size=12),
    st.sampled_from(["12", " 7 ", "1e3", "-4", "3.0", "image", "video", "text", ""]),
    st.booleans(),
    st.none(),
)
_KEYS = st.sampled_from([
    "gen_ai.usage.prompt_tokens", "gen_ai.usage.completion_tokens", "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens", "gen_ai.latency.time_in_queue", "gen_ai.latency.time_to_first_token",
    "gen_ai.latency.time_in_model_prefill", "gen_ai.latency.time_in_model_decode",
    "gen_ai.request.id", "gen_ai.response.id", "gen_ai.request.model", "gen_ai.response.model",
    "gen_ai.output.type", "gen_ai.request.n", "gen_ai.request.choice.count", "other.key",
])
_SPAN = st.fixed_dictionaries(
    {"attrs": st.dictionaries(_KEYS, _VALUE, max_size=8)},
    optional={
        "name": st.sampled_from(["llm_request", "chat", ""]),
        "start": st.sampled_from([0, T0, T0 + 10]),
        "end": st.sampled_from([0, T0, T0 + 5, T0 + 10**9]),
        "trace_id": st.sampled_from([b"", b"\x07" * 16, b"\x07" * 15]),
        "span_id": st.sampled_from([b"\x09" * 8, b"\x09" * 9]),
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_SPAN, max_size=6))
def test_random_spans_protobuf_and_json_agree(spans):
    res = decode_both(make_request(spans))
    assert len(res.batch.records()) + res.rejected + res.ignored == len(spans)
    check_invariants(res)


def check_invariants(res) -> None:
    assert len(res.errors) == min(res.rejected, 5)
    for r in res.batch.records():
        for n in (r.prompt_tokens, r.completion_tokens):
            assert type(n) is int and 0 <= n <= 10**9
        for x in (r.queue_s, r.prefill_s, r.decode_s, r.ttft_s):
            assert x is None or (type(x) is float and math.isfinite(x) and x >= 0)
        assert 0 < r.start <= r.end
        assert len(r.trace_id) == 16 and len(r.span_id) == 8
        assert r.output_kind in ("text", "image", "video")
        assert (r.output_count == 0) == (r.output_kind == "text")
        assert r.request_id and len(r.model) <= 128


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=0, max_value=2704), st.integers(0, 255))
def test_arbitrary_bytes_never_escape_as_other_errors(junk, pos, byte):
    for body in (junk, fixture_bytes()[:pos] + bytes([byte]) + fixture_bytes()[pos + 1:]):
        try:
            res = decode_protobuf(body, DEFAULT_MODEL)
        except DecodeError:
            continue
        check_invariants(res)
        try:
            res = decode_json(body, DEFAULT_MODEL)
        except DecodeError:
            continue
        check_invariants(res)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_SLOTS = [
    ("root", "resourceSpans"), ("rs", "resource"), ("rs", "scopeSpans"), ("ss", "spans"),
    ("span", "traceId"), ("span", "spanId"), ("span", "startTimeUnixNano"), ("span", "endTimeUnixNano"),
    ("span", "attributes"), ("span", "name"), ("attr", "key"), ("attr", "value"), ("value", "intValue"),
    ("value", "doubleValue"), ("value", "stringValue"), ("resource", "attributes"),
]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(_SLOTS), _JSON)
def test_json_with_any_value_anywhere_never_escapes_as_other_errors(slot, junk):
    d = to_otlp_json(make_request([genai_span(**{"gen_ai.latency.time_in_queue": 0.5})], service_name="s"))
    rs = d["resourceSpans"][0]
    span = rs["scopeSpans"][0]["spans"][0]
    attr = next(a for a in span["attributes"] if a["key"] == "gen_ai.usage.input_tokens")
    target = {"root": d, "rs": rs, "ss": rs["scopeSpans"][0], "span": span, "attr": attr,
              "value": attr["value"], "resource": rs["resource"]}[slot[0]]
    target[slot[1]] = junk
    try:
        res = decode_json(json.dumps(d).encode(), DEFAULT_MODEL)
    except DecodeError:
        return
    check_invariants(res)
    if slot[0] in ("span", "attr", "value"):  # damage inside the span: that span alone is judged
        assert len(res.batch.records()) + res.rejected + res.ignored == 1


# ------------------------------------------------------------------------------------------
# The C protobuf decoder on hostile input. It must raise DecodeError or decode, never crash,
# leak or read out of bounds; where the official parser (upb) reads the same bytes, a result
# must agree with the OTLP/JSON decoder's reading of upb's message.


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def tag(num: int, wt: int) -> bytes:
    return varint(num << 3 | wt)


def ld(num: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return tag(num, 2) + varint(len(payload)) + payload


def request_of_spans(*spans: bytes, resource: bytes = b"") -> bytes:
    """An ExportTraceServiceRequest of serialized spans under one resource and scope."""
    rs = (ld(1, resource) if resource else b"") + ld(2, b"".join(ld(2, s) for s in spans))
    return ld(1, rs)


def kv(key: str | bytes, anyvalue: bytes) -> bytes:
    key = key.encode() if isinstance(key, str) else key
    return ld(1, key) + ld(2, anyvalue)


def sval(s: str | bytes) -> bytes:
    return ld(1, s.encode() if isinstance(s, str) else s)


def ival(n: int) -> bytes:
    return tag(3, 0) + varint(n & (2**64 - 1))


def raw_span(*attrs: bytes, name: bytes = b"llm_request", tid: bytes = b"\x01" * 16,
             sid: bytes = b"\x02" * 8, start: int = T0, end: int = T0 + 1000) -> bytes:
    return (ld(1, tid) + ld(2, sid) + ld(5, name) + tag(7, 1) + start.to_bytes(8, "little")
            + tag(8, 1) + end.to_bytes(8, "little") + b"".join(ld(9, a) for a in attrs))


def upb_parse(body: bytes):
    msg = trace_service_pb2.ExportTraceServiceRequest()
    try:
        msg.ParseFromString(body)
    except Exception:
        return None
    return msg


def agree_with_upb(body: bytes):
    """Decode body; if upb parses it too, the result must match the JSON route over upb's message."""
    try:
        res = decode_protobuf(body, DEFAULT_MODEL)
    except DecodeError:
        return None
    check_invariants(res)
    msg = upb_parse(body)
    if msg is not None:
        ref = decode_json(json.dumps(to_otlp_json(msg)).encode(), DEFAULT_MODEL)
        assert res.batch.records() == ref.batch.records()
        assert res.batch.rows.tobytes() == ref.batch.rows.tobytes()
        assert (res.rejected, res.ignored) == (ref.rejected, ref.ignored)
    return res


def test_rows_are_a_view_and_any_bytes_like_body_is_read():
    body = fixture_bytes()
    res = decode_protobuf(body, DEFAULT_MODEL)
    assert not res.batch.rows.flags.owndata and not res.batch.rows.flags.writeable
    for other in (bytearray(body), memoryview(body), memoryview(bytearray(body))):
        again = decode_protobuf(other, DEFAULT_MODEL)
        assert again.batch.rows.tobytes() == res.batch.rows.tobytes()
        assert again.batch.request_ids == res.batch.request_ids


def test_truncated_at_every_offset():
    body = fixture_bytes()
    for cut in range(len(body) + 1):
        prefix = body[:cut]
        res = agree_with_upb(prefix)
        assert (res is None) == (upb_parse(prefix) is None), cut


def test_truncated_span_inside_a_well_framed_message():
    """Each span cut at every byte, its length prefix (and those around it) fixed up."""
    msg = fixture_message()
    for rs_i, rs in enumerate(msg.resource_spans):
        for ss_i, ss in enumerate(rs.scope_spans):
            for sp_i, span in enumerate(ss.spans):
                raw = span.SerializeToString()
                spans = [s.SerializeToString() for s in ss.spans]
                for cut in range(len(raw) + 1):
                    spans[sp_i] = raw[:cut]
                    body = request_of_spans(*spans, resource=rs.resource.SerializeToString())
                    res = agree_with_upb(body)
                    assert (res is None) == (upb_parse(body) is None), (rs_i, ss_i, sp_i, cut)


@pytest.mark.parametrize("mask", [0x01, 0x02, 0x05, 0x07, 0x80, 0xFF])
def test_every_byte_flipped(mask):
    body = fixture_bytes()
    for pos in range(len(body)):
        agree_with_upb(body[:pos] + bytes([body[pos] ^ mask]) + body[pos + 1:])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2704), st.integers(0, 255)), min_size=1, max_size=6))
def test_random_byte_changes(changes):
    body = bytearray(fixture_bytes())
    for pos, byte in changes:
        body[pos] = byte
    agree_with_upb(bytes(body))


@pytest.mark.parametrize(
    "body",
    [
        b"\x0a" + varint(2**64 - 1),
        b"\x0a" + b"\xff" * 9 + b"\x01",
        b"\x0a" + b"\xff" * 10 + b"\x01",  # an 11-byte varint
        b"\x0a" + varint(2**63) + b"\0" * 16,
        b"\x0a" + varint(2**32 + 1) + b"\0" * 16,
        b"\x0a" + varint(2**31) + b"\0" * 16,
        b"\x0a\x05\x12\x7f\x00\x00\x00",
        ld(1, ld(2, ld(2, tag(9, 2) + varint(2**62)))),
        ld(1, ld(2, ld(2, tag(9, 2) + varint(2**64 - 1)))),
        ld(1, ld(2, ld(2, ld(9, tag(1, 2) + varint(2**40) + b"gen_ai")))),
        ld(1, ld(2, ld(2, ld(9, ld(1, b"gen_ai.usage.input_tokens") + tag(2, 2) + b"\x05\x18")))),
        ld(1, ld(2, ld(2, tag(1, 2) + b"\x10" + b"\x01" * 15))),  # trace id one byte short
        tag(1, 0) + b"\x80\x80",  # truncated varint
        tag(7, 1) + b"\0" * 7,  # truncated fixed64
        tag(7, 5) + b"\0" * 3,  # truncated fixed32
    ],
)
def test_lengths_and_varints_past_the_end(body):
    with pytest.raises(DecodeError) as exc:
        decode_protobuf(body, DEFAULT_MODEL)
    assert "ExportTraceServiceRequest" in str(exc.value)
    assert upb_parse(body) is None


def nested_kvlist(depth: int, leaf: bytes) -> bytes:
    """An AnyValue holding a kvlist holding ... `depth` levels deep."""
    v = leaf
    for _ in range(depth):
        v = ld(6, ld(1, kv("k", v)))  # AnyValue.kvlist_value{values: [KeyValue{key, value}]}
    return v


def nested_array(depth: int) -> bytes:
    v = ival(1)
    for _ in range(depth):
        v = ld(5, ld(1, v))  # AnyValue.array_value{values: [v]}
    return v


def test_deep_nesting_is_skipped_not_descended():
    deep = nested_kvlist(3000, ival(5))
    deeper = nested_array(3000)
    body = request_of_spans(
        raw_span(kv("deep.unrelated", deep), kv("deeper", deeper), kv("gen_ai.request.id", sval("a"))),
        raw_span(kv("gen_ai.usage.input_tokens", deep), sid=b"\x03" * 8),
    )
    res = decode_protobuf(body, DEFAULT_MODEL)
    assert res.batch.request_ids == ["a"]
    assert res.rejected == 1 and "prompt tokens is not a number" in res.errors[0]


def test_many_attributes_spans_and_resources():
    noise = b"".join(ld(9, kv(f"attr.{i}", ival(i))) for i in range(20_000))
    spans = [raw_span(kv("gen_ai.request.id", sval(f"r{i}")), sid=i.to_bytes(8, "big")) for i in range(3000)]
    body = request_of_spans(spans[0] + noise, *spans[1:])
    body += b"".join(request_of_spans(raw_span(kv("gen_ai.request.model", sval(f"m{i % 40}"))))
                     for i in range(3000))
    res = decode_protobuf(body, DEFAULT_MODEL)
    assert len(res.batch) == 6000 and res.rejected == res.ignored == 0
    assert res.batch.request_ids[:3000] == [f"r{i}" for i in range(3000)]
    assert res.batch.models == [DEFAULT_MODEL] + [f"m{i}" for i in range(40)]
    assert list(res.batch.rows["model"][2999:3002]) == [0, 1, 2]


@pytest.mark.parametrize("bad", [b"\xff", b"ab\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80"])
def test_invalid_utf8_in_text_read_rejects_the_message(bad):
    cases = [
        (raw_span(kv("gen_ai.request.id", sval(bad))), b"", "request id"),
        (raw_span(kv("gen_ai.response.id", sval(bad))), b"", "request id"),
        (raw_span(kv("gen_ai.request.model", sval(bad))), b"", "model"),
        (raw_span(kv("gen_ai.usage.input_tokens", sval(b"1" + bad))), b"", "prompt tokens"),
        (raw_span(), kv("service.name", sval(b"svc" + bad)), "service.name"),
    ]
    for span, resource, where in cases:
        with pytest.raises(DecodeError) as exc:
            decode_protobuf(request_of_spans(span, resource=ld(1, resource) if resource else b""), DEFAULT_MODEL)
        assert "UTF-8" in str(exc.value) and where in str(exc.value)


def test_invalid_utf8_in_text_not_read_is_skipped():
    bad = b"\xff\xfe"
    spans = [
        raw_span(kv("vendor.note", sval(bad)), kv(b"key\xff", ival(1)), kv("gen_ai.request.id", sval("ok")),
                 name=b"llm_request"),
        raw_span(kv("gen_ai.usage.input_tokens", ival(-1)), kv("gen_ai.request.id", sval(bad)), sid=b"\x03" * 8),
        raw_span(kv("gen_ai.request.id", sval(bad)), name=b"not a request" + bad, sid=b"\x04" * 8),
    ]
    resource = ld(1, kv("service.name", sval(b"unknown_service:" + bad)))
    res = decode_protobuf(request_of_spans(*spans, resource=resource), DEFAULT_MODEL)
    assert res.batch.request_ids == ["ok"] and res.rejected == 1 and res.ignored == 1
    assert res.batch.models == [DEFAULT_MODEL]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (tag(1, 0) + b"\x01", "resource_spans"),
        (ld(1, tag(1, 5) + b"\0\0\0\0"), "ResourceSpans.resource"),
        (ld(1, tag(2, 1) + b"\0" * 8), "ResourceSpans.scope_spans"),
        (ld(1, ld(1, tag(1, 0) + b"\x00")), "Resource.attributes"),
        (ld(1, ld(2, tag(2, 0) + b"\x00")), "ScopeSpans.spans"),
        (request_of_spans(tag(1, 1) + b"\0" * 8), "Span.trace_id"),
        (request_of_spans(tag(2, 0) + b"\x05"), "Span.span_id"),
        (request_of_spans(tag(5, 5) + b"\0" * 4), "Span.name"),
        (request_of_spans(tag(7, 0) + varint(T0)), "Span.start_time_unix_nano"),
        (request_of_spans(tag(8, 2) + b"\x08" + b"\0" * 8), "Span.end_time_unix_nano"),
        (request_of_spans(tag(9, 0) + b"\x01"), "Span.attributes"),
        (request_of_spans(ld(9, tag(1, 0) + b"\x01")), "KeyValue.key"),
        (request_of_spans(ld(9, ld(1, b"x") + tag(2, 1) + b"\0" * 8)), "KeyValue.value"),
        (request_of_spans(ld(9, kv("gen_ai.usage.input_tokens", tag(3, 1) + b"\0" * 8))), "int_value"),
        (request_of_spans(ld(9, kv("gen_ai.latency.time_in_queue", tag(4, 0) + b"\x01"))), "double_value"),
        (request_of_spans(ld(9, kv("gen_ai.request.id", tag(1, 0) + b"\x01"))), "string_value"),
        (request_of_spans(ld(9, kv("gen_ai.request.id", tag(2, 2) + b"\x00"))), "bool_value"),
        (request_of_spans(ld(9, kv("gen_ai.request.id", tag(6, 0) + b"\x00"))), "kvlist"),
        (ld(1, ld(1, ld(1, kv("service.name", tag(1, 5) + b"abcd")))), "string_value"),
    ],
)
def test_wrong_wire_type_for_a_field_read(body, fragment):
    with pytest.raises(DecodeError) as exc:
        decode_protobuf(body, DEFAULT_MODEL)
    assert fragment in str(exc.value) and "wire type" in str(exc.value)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (tag(40, 3) + tag(40, 4), "group"),
        (request_of_spans(raw_span() + tag(20, 3) + tag(20, 4)), "group"),
        (request_of_spans(raw_span(kv("gen_ai.request.id", tag(9, 3) + tag(9, 4)))), "group"),
        (tag(40, 4), "group"),
        (tag(40, 6) + b"\0" * 8, "wire type"),
        (tag(40, 7), "wire type"),
        (b"\x00\x00", "field number"),
        (ld(1, ld(2, b"\x02\x00")), "field number"),
        (varint((2**32) << 3), "field number"),
        (b"\x80" * 5 + b"\x10", "field number"),
        (b"\x80" * 11, "field tag"),
    ],
)
def test_groups_invalid_wire_types_and_field_numbers(body, fragment):
    with pytest.raises(DecodeError) as exc:
        decode_protobuf(body, DEFAULT_MODEL)
    assert fragment in str(exc.value)


UNKNOWN_FIELDS = (tag(1000, 0) + varint(2**63) + tag(1001, 1) + b"\x11" * 8 + ld(1002, b"\xff\x00junk")
                  + tag(1003, 5) + b"\x22" * 4 + tag(15, 0) + b"\x07")


def test_unknown_fields_of_every_wire_type_are_skipped_everywhere():
    msg = fixture_message()
    extra = make_request([genai_span(**{"gen_ai.request.model": "m", "gen_ai.latency.time_in_queue": 0.5})],
                         service_name="svc")
    msg.resource_spans.extend(extra.resource_spans)
    plain = decode_protobuf(msg.SerializeToString(), DEFAULT_MODEL)

    def salt(m) -> None:
        for field, value in m.ListFields():
            if field.message_type is None:
                continue
            for sub in (value if field.is_repeated else [value]):
                salt(sub)
        m.MergeFromString(UNKNOWN_FIELDS)

    salt(msg)
    salted = msg.SerializeToString()
    assert salted.count(UNKNOWN_FIELDS) > 100
    res = agree_with_upb(salted)
    assert res.batch.rows.tobytes() == plain.batch.rows.tobytes()
    assert (res.batch.models, res.batch.request_ids, res.rejected, res.ignored) == (
        plain.batch.models, plain.batch.request_ids, plain.rejected, plain.ignored)


def test_merge_rules_of_repeated_fields():
    """Protobuf merges repeated occurrences: the resource may come after its spans and in parts,
    a KeyValue's value may come in parts, a span's scalar fields may repeat (the last wins)."""
    span = (raw_span(kv("gen_ai.request.id", sval("first")), tid=b"\x05" * 16, start=T0 - 5)
            + ld(9, kv("gen_ai.request.id", sval("second")))  # a repeated key: the last wins
            + ld(9, kv("gen_ai.usage.input_tokens", sval("12")) + ld(2, ival(7)))  # parts merge: int
            + ld(9, kv("gen_ai.usage.output_tokens", ival(3)) + ld(2, b""))  # empty part: int stays
            + ld(9, ld(2, tag(4, 1) + struct.pack("<d", 0.25)) + ld(1, b"gen_ai.latency.time_in_queue"))
            + ld(1, b"\x06" * 16) + tag(7, 1) + T0.to_bytes(8, "little"))
    rs = (ld(2, ld(2, span)) + ld(1, ld(1, kv("service.name", sval("first-svc"))))
          + ld(1, ld(1, kv("service.name", sval("svc"))) + ld(1, kv("other", ival(1)))))
    res = agree_with_upb(ld(1, rs))
    (rec,) = res.batch.records()
    assert rec.request_id == "second" and rec.model == "svc"
    assert (rec.prompt_tokens, rec.completion_tokens, rec.queue_s) == (7, 3, 0.25)
    assert rec.trace_id == b"\x06" * 16 and rec.start == T0 / 1e9


def test_no_leaks_on_error_paths():
    """Inputs that fail after rows, ids, models and error messages were made, decoded many times:
    memory must not grow, and the default model's reference count must come back."""
    good = fixture_bytes() + request_of_spans(
        raw_span(kv("gen_ai.request.model", sval("m1"))),
        raw_span(kv("gen_ai.usage.input_tokens", ival(-1)), sid=b"\x03" * 8),
    )
    bad_inputs = [
        good + b"\x0a\x7f",  # a length past the end, after everything else was decoded
        good + request_of_spans(raw_span(kv("gen_ai.request.id", sval(b"\xff")))),
        good + request_of_spans(raw_span(kv("gen_ai.request.model", sval(b"\xff")))),
        good + request_of_spans(raw_span(), resource=ld(1, kv("service.name", sval(b"s\xff")))),
        good + request_of_spans(raw_span(kv("gen_ai.usage.input_tokens", sval(b"\xff")))),
        good + tag(40, 3),
    ]
    default = "default-" + "x" * 20  # a fresh object
    refs = sys.getrefcount(default)

    def run(n: int) -> None:
        for _ in range(n):
            decode_protobuf(good, default)
            for body in bad_inputs:
                with pytest.raises(DecodeError):
                    decode_protobuf(body, default)

    run(50)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run(500)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, grown
    assert sys.getrefcount(default) == refs


_NAME = st.one_of(
    st.text(max_size=6),
    st.text(min_size=120, max_size=300),
    st.sampled_from(["", "unknown_service", "unknown_service:python", "svc", "llama-3.1-8b", "é" * 130, "\x00"]),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.none() | _NAME, st.lists(st.tuples(_NAME, _NAME, _NAME, _NAME), max_size=4)),
                min_size=1, max_size=3),
       _NAME)
def test_models_and_ids_agree_with_json(resources, default_model):
    """Model and request-id resolution (precedence, fallbacks, cuts, dedup) over several resources."""
    msg = trace_service_pb2.ExportTraceServiceRequest()
    for i, (service, spans) in enumerate(resources):
        one = make_request(
            [{"name": "llm_request", "attrs": {k: v for k, v in zip(
                ("gen_ai.response.model", "gen_ai.request.model", "gen_ai.request.id", "gen_ai.response.id"),
                names) if v}} for names in spans],
            service_name=service)
        msg.resource_spans.extend(one.resource_spans)
    res = decode_both(msg, default_model)
    assert res.rejected == res.ignored == 0
    assert len(set(res.batch.models)) == len(res.batch.models)
    assert all(len(m) <= 128 for m in res.batch.models)
    assert all(0 < len(r) <= 256 for r in res.batch.request_ids)
