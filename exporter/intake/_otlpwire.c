/*
 * _otlpwire: OTLP/protobuf trace export requests read straight off the wire into request rows.
 *
 *     decode(body, default_model) -> (rows, models, pods, request_ids, rejected, ignored, errors)
 *
 * body is any contiguous bytes-like object holding an ExportTraceServiceRequest. Each request
 * span becomes one ROW_SIZE-byte row of `rows` (bytes; the layout of records.REQUEST_DTYPE, given
 * by ROW_LAYOUT), its request id one str of `request_ids`; a row's `model` indexes `models`, the
 * distinct model names of the message in order of first use; its `pod` indexes `pods`, the
 * distinct Kubernetes pods (`namespace/name`, or `name` alone) its resources name through
 * k8s.namespace.name and k8s.pod.name, or is -1 for a span whose resource names none. `rejected`
 * and `ignored` count the
 * invalid request spans and the spans that are not requests; `errors` holds up to MAX_ERRORS
 * messages about rejected spans. Which spans are requests and what makes one invalid is told in
 * exporter/intake/otlp.py; the rules here are the same as its OTLP/JSON decoder's.
 *
 * ValueError, with the byte offset, when the message itself is unusable: a truncated or overlong
 * varint, a length past the end of its enclosing message, a group or an invalid wire type, field
 * number 0, a field read here arriving with another wire type than its schema's, or invalid UTF-8
 * in a string turned into text (request ids, model names, service.name, pod names, token counts written as
 * strings). Fields not read here are skipped by wire type without looking inside, so nothing
 * recurses: AnyValue arrays and key-value lists are never descended.
 *
 * Repeated occurrences follow protobuf's merge rules: the last scalar wins, occurrences of a
 * singular message (a span's resource, a KeyValue's value) merge, and of attributes with the same
 * key the last wins.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "_otlpwire reads and writes little-endian values in place"
#endif

#if defined(__GNUC__) || defined(__clang__)
#define HOT_INLINE inline __attribute__((always_inline))
#define COLD __attribute__((cold, noinline))
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define HOT_INLINE inline
#define COLD
#define LIKELY(x) (x)
#define UNLIKELY(x) (x)
#endif

#define MAX_TOKENS 1000000000
#define MAX_MODEL_CHARS 128
#define MAX_REQUEST_ID_CHARS 256
#define MAX_POD_NAME_CHARS 253 /* Kubernetes' longest object name */
#define MAX_ERRORS 5
#define MAX_ID_BYTES_IN_ERRORS 64 /* longer span ids are cut in error messages */

/* ---------------------------------------------------------------------------------------------
 * Rows: records.REQUEST_DTYPE, little-endian, fields naturally aligned. */

typedef struct {
    double start, end;
    double queue_s, prefill_s, decode_s, ttft_s; /* NaN: absent */
    int64_t prompt_tokens, completion_tokens, output_count;
    uint8_t trace_id[16];
    uint8_t span_id[8];
    int32_t model;
    int32_t pod;        /* -1: the resource names no pod */
    int8_t output_kind; /* 0 text, 1 image, 2 video */
    uint8_t pad[7];
} Row;

_Static_assert(sizeof(Row) == 112, "a row is 112 bytes");

enum { KIND_TEXT = 0, KIND_IMAGE = 1, KIND_VIDEO = 2 };

/* The quiet NaN that Python's float("nan") and numpy's nan are, bit for bit. */
static double
absent(void)
{
    const uint64_t bits = UINT64_C(0x7ff8000000000000);
    double x;
    memcpy(&x, &bits, sizeof x);
    return x;
}

/* ---------------------------------------------------------------------------------------------
 * The OTLP attributes read from a span, by key. */

enum {
    A_PROMPT, A_COMPLETION, A_INPUT, A_OUTPUT, A_OUTPUT_TYPE, A_REQUEST_ID, A_RESPONSE_ID,
    A_RESPONSE_MODEL, A_REQUEST_MODEL, A_QUEUE, A_PREFILL, A_DECODE, A_TTFT, A_CHOICE_COUNT, A_N,
    N_ATTRS
};

static const char *const ATTR_KEYS[N_ATTRS] = {
    "gen_ai.usage.prompt_tokens",
    "gen_ai.usage.completion_tokens",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "gen_ai.output.type",
    "gen_ai.request.id",
    "gen_ai.response.id",
    "gen_ai.response.model",
    "gen_ai.request.model",
    "gen_ai.latency.time_in_queue",
    "gen_ai.latency.time_in_model_prefill",
    "gen_ai.latency.time_in_model_decode",
    "gen_ai.latency.time_to_first_token",
    "gen_ai.request.choice.count",
    "gen_ai.request.n",
};

#define SERVICE_NAME "service.name"
#define POD_NAME "k8s.pod.name"
#define POD_NAMESPACE "k8s.namespace.name"
#define UNKNOWN_SERVICE "unknown_service"
#define LLM_REQUEST "llm_request"

/* The attribute a key names, or -1. Every key read starts with "gen_ai."; the length picks at
 * most two candidates. Checked against ATTR_KEYS when the module loads. */
static inline int
attr_index(const uint8_t *key, size_t n)
{
    const char *rest;
    size_t m;
    if (n < 16 || n > 36 || memcmp(key, "gen_ai.", 7) != 0)
        return -1;
    rest = (const char *)key + 7;
    m = n - 7;
#define IS(s, id) \
    if (m == sizeof(s) - 1 && memcmp(rest, s, sizeof(s) - 1) == 0) return id
    switch (n) {
    case 16: IS("request.n", A_N); break;
    case 17: IS("request.id", A_REQUEST_ID); break;
    case 18: IS("output.type", A_OUTPUT_TYPE); IS("response.id", A_RESPONSE_ID); break;
    case 20: IS("request.model", A_REQUEST_MODEL); break;
    case 21: IS("response.model", A_RESPONSE_MODEL); break;
    case 25: IS("usage.input_tokens", A_INPUT); break;
    case 26: IS("usage.prompt_tokens", A_PROMPT); IS("usage.output_tokens", A_OUTPUT); break;
    case 27: IS("request.choice.count", A_CHOICE_COUNT); break;
    case 28: IS("latency.time_in_queue", A_QUEUE); break;
    case 30: IS("usage.completion_tokens", A_COMPLETION); break;
    case 34: IS("latency.time_to_first_token", A_TTFT); break;
    case 35: IS("latency.time_in_model_decode", A_DECODE); break;
    case 36: IS("latency.time_in_model_prefill", A_PREFILL); break;
    default: break;
    }
#undef IS
    return -1;
}

/* ---------------------------------------------------------------------------------------------
 * Decoder state */

enum { AV_NONE, AV_STRING, AV_BOOL, AV_INT, AV_DOUBLE, AV_OTHER };

typedef struct {
    int type; /* AV_NONE: the KeyValue has no value, or an empty one */
    const uint8_t *s;
    size_t n;
    int64_t i;
    double x;
} AnyValue;

typedef struct {
    const uint8_t *tid, *sid, *name;
    size_t tid_n, sid_n, name_n;
    uint64_t start, end;
    uint32_t present; /* bit per attribute read */
    AnyValue attr[N_ATTRS];
} Span;

#define N_RECENT 4

typedef struct {
    const uint8_t *base; /* the body, for offsets in messages */
    PyObject *default_model;

    PyObject *rows; /* bytes, cap rows long while filling */
    Py_ssize_t nrows, cap;
    PyObject *models;      /* list of str */
    PyObject *model_index; /* dict: model str -> index */
    PyObject *raw_models;  /* dict: attribute bytes -> index */
    struct {
        const uint8_t *p;
        size_t n;
        int32_t index;
    } recent[N_RECENT]; /* the last raw model strings seen, pointing into the body */
    int nrecent, next_recent;
    int32_t default_index; /* -1 until first used */

    AnyValue service;       /* service.name of the current resource (AV_NONE: absent) */
    int32_t fallback_index; /* -1 until first used in the current resource */
    AnyValue pod_name, pod_namespace; /* k8s.pod.name, k8s.namespace.name of the current resource */
    int32_t resource_pod;   /* its index in pods; -1: none; -2 until first used */
    PyObject *pods;         /* list of str */
    PyObject *pod_index;    /* dict: pod str -> index */

    PyObject *request_ids; /* list of str */
    PyObject *errors;      /* list of str */
    Py_ssize_t rejected, ignored;
    PyObject *reason; /* why the span being judged is invalid, when a message is still wanted */
} Decoder;

/* ---------------------------------------------------------------------------------------------
 * Wire format */

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_SGROUP = 3, WT_EGROUP = 4, WT_I32 = 5 };

typedef struct {
    const uint8_t *at; /* the tag */
    const uint8_t *p;  /* WT_LEN: the payload */
    size_t n;
    uint64_t v; /* WT_VARINT, WT_I64, WT_I32: the value */
    uint32_t num, wt;
} Field;

static Py_ssize_t
offset(const Decoder *d, const uint8_t *at)
{
    return (Py_ssize_t)(at - d->base);
}

static COLD int
malformed(const Decoder *d, const uint8_t *at, const char *what)
{
    PyErr_Format(PyExc_ValueError, "%s at byte %zd", what, offset(d, at));
    return -1;
}

static COLD int
wrong_type(const Decoder *d, const Field *f, const char *name, uint32_t want)
{
    PyErr_Format(PyExc_ValueError, "%s has wire type %u instead of %u at byte %zd", name,
                 (unsigned)f->wt, (unsigned)want, offset(d, f->at));
    return -1;
}

static COLD int
overrun(const Decoder *d, const Field *f, uint64_t len, size_t left)
{
    PyErr_Format(PyExc_ValueError,
                 "field %u of %llu bytes at byte %zd runs past the end of its message "
                 "(%zd bytes left)",
                 (unsigned)f->num, (unsigned long long)len, offset(d, f->at), (Py_ssize_t)left);
    return -1;
}

#define EXPECT(d, f, want, name) \
    do { if (UNLIKELY((f).wt != (want))) return wrong_type((d), &(f), (name), (want)); } while (0)

/* At most ten bytes; bits past the 64th are dropped, as protobuf parsers do. 0, or -1 if the
 * data ends first or the tenth byte still continues. */
static inline int
read_varint(const uint8_t **pp, const uint8_t *end, uint64_t *out)
{
    const uint8_t *p = *pp;
    uint64_t v = 0;
    unsigned shift;
    for (shift = 0; shift < 64; shift += 7) {
        uint8_t b;
        if (p >= end)
            return -1;
        b = *p++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (b < 0x80) {
            *pp = p;
            *out = v;
            return 0;
        }
    }
    return -1;
}

/* The field at *pp, which is then moved past it: 1, or 0 at `end`, or -1 with ValueError set. */
static HOT_INLINE int
next_field(const Decoder *d, const uint8_t **pp, const uint8_t *end, Field *f)
{
    const uint8_t *p = *pp;
    uint64_t tag, len;

    if (p >= end)
        return 0;
    f->at = p;
    if (*p < 0x80)
        tag = *p++;
    else if (read_varint(&p, end, &tag) < 0)
        return malformed(d, f->at, "truncated or overlong field tag");
    if (tag > UINT32_MAX || (tag >> 3) == 0)
        return malformed(d, f->at, "invalid field number");
    f->num = (uint32_t)(tag >> 3);
    f->wt = (uint32_t)(tag & 7);
    /* if-chains in order of frequency: direct branches predict better than a jump table */
    if (LIKELY(f->wt == WT_LEN)) {
        if (p < end && *p < 0x80)
            len = *p++;
        else if (read_varint(&p, end, &len) < 0)
            return malformed(d, f->at, "truncated or overlong length");
        if (UNLIKELY(len > (uint64_t)(end - p)))
            return overrun(d, f, len, (size_t)(end - p));
        f->p = p;
        f->n = (size_t)len;
        p += len;
    }
    else if (f->wt == WT_I64) {
        if (end - p < 8)
            return malformed(d, f->at, "truncated 64-bit field");
        memcpy(&f->v, p, 8);
        p += 8;
    }
    else if (f->wt == WT_VARINT) {
        if (p < end && *p < 0x80)
            f->v = *p++;
        else if (read_varint(&p, end, &f->v) < 0)
            return malformed(d, f->at, "truncated or overlong varint");
    }
    else if (f->wt == WT_I32) {
        uint32_t v32;
        if (end - p < 4)
            return malformed(d, f->at, "truncated 32-bit field");
        memcpy(&v32, p, 4);
        f->v = v32;
        p += 4;
    }
    else if (f->wt == WT_SGROUP || f->wt == WT_EGROUP) {
        return malformed(d, f->at, "group fields are not supported");
    }
    else {
        return malformed(d, f->at, "invalid wire type");
    }
    *pp = p;
    return 1;
}

static inline int64_t
as_int64(uint64_t v)
{
    return v <= (uint64_t)INT64_MAX ? (int64_t)v : -(int64_t)(~v) - 1;
}

/* An AnyValue's fields, merged into *av (a later member of the oneof replaces an earlier one). */
static int parse_anyvalue_fields(const Decoder *d, const uint8_t *p, const uint8_t *end, AnyValue *av);

static HOT_INLINE int
parse_anyvalue(const Decoder *d, const uint8_t *p, const uint8_t *end, AnyValue *av)
{
    size_t n = (size_t)(end - p);

    /* Fast paths for the usual encoding, one field with a one-byte tag (and length) filling the
     * message; anything else takes the general loop below. */
    if (n >= 2) {
        switch (p[0]) {
        case 0x0a: /* string_value */
            if (p[1] < 0x80 && (size_t)p[1] == n - 2) {
                av->type = AV_STRING;
                av->s = p + 2;
                av->n = n - 2;
                return 0;
            }
            break;
        case 0x18: /* int_value */
            if (p[1] < 0x80 && n == 2) {
                av->type = AV_INT;
                av->i = p[1];
                return 0;
            }
            break;
        case 0x21: /* double_value */
            if (n == 9) {
                av->type = AV_DOUBLE;
                memcpy(&av->x, p + 1, 8);
                return 0;
            }
            break;
        default:
            break;
        }
    }
    return parse_anyvalue_fields(d, p, end, av);
}

static int
parse_anyvalue_fields(const Decoder *d, const uint8_t *p, const uint8_t *end, AnyValue *av)
{
    Field f;
    int r;
    while ((r = next_field(d, &p, end, &f)) > 0) {
        switch (f.num) {
        case 1:
            EXPECT(d, f, WT_LEN, "AnyValue.string_value");
            av->type = AV_STRING;
            av->s = f.p;
            av->n = f.n;
            break;
        case 2:
            EXPECT(d, f, WT_VARINT, "AnyValue.bool_value");
            av->type = AV_BOOL;
            break;
        case 3:
            EXPECT(d, f, WT_VARINT, "AnyValue.int_value");
            av->type = AV_INT;
            av->i = as_int64(f.v);
            break;
        case 4:
            EXPECT(d, f, WT_I64, "AnyValue.double_value");
            av->type = AV_DOUBLE;
            memcpy(&av->x, &f.v, 8);
            break;
        case 5: /* array_value, kvlist_value, bytes_value: skipped, never descended */
        case 6:
        case 7:
            EXPECT(d, f, WT_LEN, "AnyValue array, kvlist or bytes value");
            av->type = AV_OTHER;
            break;
        case 8:
            EXPECT(d, f, WT_VARINT, "AnyValue.string_value_strindex");
            av->type = AV_OTHER;
            break;
        default:
            break;
        }
    }
    return r;
}

typedef struct {
    const uint8_t *key;
    size_t key_n;
    const uint8_t *val; /* the first value's payload */
    size_t val_n;
    int nvalues;
} KeyValue;

static HOT_INLINE int
scan_keyvalue(const Decoder *d, const uint8_t *p, const uint8_t *end, KeyValue *kv)
{
    Field f;
    int r;
    size_t n = (size_t)(end - p);

    /* Fast path: key then one value, one-byte tags and lengths, exactly filling the KeyValue. */
    if (n >= 4 && p[0] == 0x0a && p[1] < 0x80 && (size_t)p[1] + 4 <= n) {
        const uint8_t *v = p + 2 + p[1];
        if (v[0] == 0x12 && v[1] < 0x80 && (size_t)(v + 2 + v[1] - p) == n) {
            kv->key = p + 2;
            kv->key_n = p[1];
            kv->val = v + 2;
            kv->val_n = v[1];
            kv->nvalues = 1;
            return 0;
        }
    }
    kv->key = (const uint8_t *)"";
    kv->key_n = 0;
    kv->val = NULL;
    kv->val_n = 0;
    kv->nvalues = 0;
    while ((r = next_field(d, &p, end, &f)) > 0) {
        if (f.num == 1) {
            EXPECT(d, f, WT_LEN, "KeyValue.key");
            kv->key = f.p;
            kv->key_n = f.n;
        }
        else if (f.num == 2) {
            EXPECT(d, f, WT_LEN, "KeyValue.value");
            if (kv->nvalues++ == 0) {
                kv->val = f.p;
                kv->val_n = f.n;
            }
        }
    }
    return r;
}

/* The value of a KeyValue scanned from [p, end). */
static int
read_value(const Decoder *d, const uint8_t *p, const uint8_t *end, const KeyValue *kv, AnyValue *av)
{
    Field f;
    int r;
    av->type = AV_NONE;
    if (kv->nvalues == 0)
        return 0;
    if (kv->nvalues == 1)
        return parse_anyvalue(d, kv->val, kv->val + kv->val_n, av);
    /* the value field repeats: its occurrences merge, as those of any singular message do */
    while ((r = next_field(d, &p, end, &f)) > 0)
        if (f.num == 2 && parse_anyvalue(d, f.p, f.p + f.n, av) < 0)
            return -1;
    return r;
}

/* ---------------------------------------------------------------------------------------------
 * Text */

/* The UTF-8 string at [p, p + n) as str, cut to `limit` characters. */
static PyObject *
text(const Decoder *d, const uint8_t *p, size_t n, Py_ssize_t limit, const char *what)
{
    PyObject *s = PyUnicode_DecodeUTF8((const char *)p, (Py_ssize_t)n, NULL);
    if (s == NULL) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "invalid UTF-8 in %s at byte %zd", what,
                         offset(d, p));
        }
        return NULL;
    }
    if (limit >= 0 && PyUnicode_GET_LENGTH(s) > limit) {
        PyObject *cut = PyUnicode_Substring(s, 0, limit);
        Py_DECREF(s);
        return cut;
    }
    return s;
}

static PyObject *
hex_id(const uint8_t *p, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    PyObject *s = PyUnicode_New((Py_ssize_t)(2 * n), 127);
    Py_UCS1 *out;
    size_t i;
    if (s == NULL)
        return NULL;
    out = PyUnicode_1BYTE_DATA(s);
    for (i = 0; i < n; i++) {
        out[2 * i] = (Py_UCS1)digits[p[i] >> 4];
        out[2 * i + 1] = (Py_UCS1)digits[p[i] & 15];
    }
    return s;
}

static inline int
bytes_eq(const uint8_t *p, size_t n, const char *lit, size_t lit_n)
{
    return n == lit_n && memcmp(p, lit, n) == 0;
}

/* ---------------------------------------------------------------------------------------------
 * Models */

static int32_t
model_of_str(Decoder *d, PyObject *name)
{
    PyObject *found = PyDict_GetItemWithError(d->model_index, name);
    PyObject *index;
    Py_ssize_t n;
    if (found != NULL)
        return (int32_t)PyLong_AsLong(found);
    if (PyErr_Occurred())
        return -1;
    n = PyList_GET_SIZE(d->models);
    if (n >= INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "too many distinct models");
        return -1;
    }
    index = PyLong_FromSsize_t(n);
    if (index == NULL)
        return -1;
    if (PyDict_SetItem(d->model_index, name, index) < 0 || PyList_Append(d->models, name) < 0) {
        Py_DECREF(index);
        return -1;
    }
    Py_DECREF(index);
    return (int32_t)n;
}

/* The index of a model named in a span attribute, given as its raw UTF-8 bytes. */
static int32_t
model_of_bytes(Decoder *d, const uint8_t *p, size_t n)
{
    PyObject *key, *found, *name, *index;
    int32_t result;
    int i;

    for (i = 0; i < d->nrecent; i++)
        if (d->recent[i].n == n && memcmp(d->recent[i].p, p, n) == 0)
            return d->recent[i].index;

    key = PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)n);
    if (key == NULL)
        return -1;
    found = PyDict_GetItemWithError(d->raw_models, key);
    if (found != NULL) {
        result = (int32_t)PyLong_AsLong(found);
    }
    else if (PyErr_Occurred()) {
        result = -1;
    }
    else {
        name = text(d, p, n, MAX_MODEL_CHARS, "a model name");
        result = name == NULL ? -1 : model_of_str(d, name);
        Py_XDECREF(name);
        if (result >= 0) {
            index = PyLong_FromLong(result);
            if (index == NULL || PyDict_SetItem(d->raw_models, key, index) < 0)
                result = -1;
            Py_XDECREF(index);
        }
    }
    Py_DECREF(key);
    if (result < 0)
        return -1;

    i = d->next_recent;
    d->recent[i].p = p;
    d->recent[i].n = n;
    d->recent[i].index = result;
    d->next_recent = (i + 1) % N_RECENT;
    if (d->nrecent < N_RECENT)
        d->nrecent++;
    return result;
}

/* The model of a span that names none: the resource's service.name unless it is absent, empty
 * or OpenTelemetry's "unknown_service..." default, else the default model. */
static int32_t
fallback_model(Decoder *d)
{
    const AnyValue *sv = &d->service;
    if (d->fallback_index >= 0)
        return d->fallback_index;
    if (sv->type == AV_STRING && sv->n > 0
        && !(sv->n >= sizeof(UNKNOWN_SERVICE) - 1
             && memcmp(sv->s, UNKNOWN_SERVICE, sizeof(UNKNOWN_SERVICE) - 1) == 0)) {
        PyObject *name = text(d, sv->s, sv->n, MAX_MODEL_CHARS, SERVICE_NAME);
        if (name == NULL)
            return -1;
        d->fallback_index = model_of_str(d, name);
        Py_DECREF(name);
        return d->fallback_index;
    }
    if (d->default_index < 0) {
        PyObject *name = PyUnicode_Substring(d->default_model, 0, MAX_MODEL_CHARS);
        if (name == NULL)
            return -1;
        d->default_index = model_of_str(d, name);
        Py_DECREF(name);
        if (d->default_index < 0)
            return -1;
    }
    d->fallback_index = d->default_index;
    return d->fallback_index;
}

/* The pod of the current resource: `namespace/name` from k8s.namespace.name and k8s.pod.name,
 * `name` alone without a namespace, -1 without a name (each part cut to MAX_POD_NAME_CHARS). */
static int32_t
resource_pod(Decoder *d)
{
    const AnyValue *nm = &d->pod_name, *ns = &d->pod_namespace;
    PyObject *name, *key, *found, *index;
    Py_ssize_t n;
    if (d->resource_pod != -2)
        return d->resource_pod;
    if (nm->type != AV_STRING || nm->n == 0)
        return d->resource_pod = -1;
    name = text(d, nm->s, nm->n, MAX_POD_NAME_CHARS, POD_NAME);
    if (name == NULL)
        return -2;
    if (ns->type == AV_STRING && ns->n > 0) {
        PyObject *space = text(d, ns->s, ns->n, MAX_POD_NAME_CHARS, POD_NAMESPACE);
        key = space == NULL ? NULL : PyUnicode_FromFormat("%U/%U", space, name);
        Py_XDECREF(space);
        Py_DECREF(name);
    }
    else {
        key = name;
    }
    if (key == NULL)
        return -2;
    found = PyDict_GetItemWithError(d->pod_index, key);
    if (found != NULL) {
        Py_DECREF(key);
        return d->resource_pod = (int32_t)PyLong_AsLong(found);
    }
    n = PyList_GET_SIZE(d->pods);
    index = PyErr_Occurred() ? NULL : PyLong_FromSsize_t(n);
    if (index == NULL || PyDict_SetItem(d->pod_index, key, index) < 0 || PyList_Append(d->pods, key) < 0) {
        Py_XDECREF(index);
        Py_DECREF(key);
        return -2;
    }
    Py_DECREF(index);
    Py_DECREF(key);
    return d->resource_pod = (int32_t)n;
}

/* ---------------------------------------------------------------------------------------------
 * Judging a request span. Each check answers 0 (valid), 1 (invalid: d->reason says why, if a
 * message is still wanted) or -1 (a Python error). */

static inline int
want_reason(const Decoder *d)
{
    return PyList_GET_SIZE(d->errors) < MAX_ERRORS;
}

static int
invalid(Decoder *d, const char *fmt, ...)
{
    va_list va;
    if (!want_reason(d))
        return 1;
    va_start(va, fmt);
    d->reason = PyUnicode_FromFormatV(fmt, va);
    va_end(va);
    return d->reason == NULL ? -1 : 1;
}

/* fmt has one %s (what) and one %R or %S for obj, which this steals. */
static int
invalid_obj(Decoder *d, const char *fmt, const char *what, PyObject *obj)
{
    if (obj == NULL)
        return -1;
    d->reason = PyUnicode_FromFormat(fmt, what, obj);
    Py_DECREF(obj);
    return d->reason == NULL ? -1 : 1;
}

static int
invalid_float(Decoder *d, const char *fmt, const char *what, double x)
{
    return want_reason(d) ? invalid_obj(d, fmt, what, PyFloat_FromDouble(x)) : 1;
}

/* int(x) of an integral double x, in the message */
static int
invalid_int_of(Decoder *d, const char *fmt, const char *what, double x)
{
    return want_reason(d) ? invalid_obj(d, fmt, what, PyLong_FromDouble(x)) : 1;
}

/* [+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)? over all of s */
static int
number_syntax(const char *s, Py_ssize_t n)
{
    Py_ssize_t i = 0, j;
#define DIGIT(k) ((k) < n && s[k] >= '0' && s[k] <= '9')
    if (i < n && (s[i] == '+' || s[i] == '-'))
        i++;
    if (DIGIT(i)) {
        while (DIGIT(i))
            i++;
        if (i < n && s[i] == '.')
            i++;
        while (DIGIT(i))
            i++;
    }
    else if (i < n && s[i] == '.' && DIGIT(i + 1)) {
        i++;
        while (DIGIT(i))
            i++;
    }
    else {
        return 0;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        j = i + 1;
        if (j < n && (s[j] == '+' || s[j] == '-'))
            j++;
        if (!DIGIT(j))
            return 0;
        while (DIGIT(j))
            j++;
        i = j;
    }
#undef DIGIT
    return i == n;
}

/* A whole number written as a string: surrounding whitespace allowed, then a decimal or
 * floating-point literal of at most 32 characters with an integral value. */
static int
count_of_string(Decoder *d, const AnyValue *v, const char *what, int64_t *out)
{
    PyObject *val, *s = NULL;
    const char *a;
    Py_ssize_t n, i;
    int r;

    val = text(d, v->s, v->n, -1, what);
    if (val == NULL)
        return -1;
    s = PyObject_CallMethod(val, "strip", NULL);
    if (s == NULL) {
        r = -1;
        goto done;
    }
    n = PyUnicode_GET_LENGTH(s);
    a = PyUnicode_IS_ASCII(s) ? (const char *)PyUnicode_1BYTE_DATA(s) : NULL;
    if (n > 32 || a == NULL || !number_syntax(a, n)) {
        r = want_reason(d)
            ? invalid_obj(d, "%s is not a number: %R", what, PyUnicode_Substring(val, 0, 40))
            : 1;
        goto done;
    }
    for (i = 0; i < n && a[i] >= '0' && a[i] <= '9'; i++)
        ;
    if (i == n) { /* digits only */
        uint64_t x = 0;
        for (i = 0; i < n && a[i] == '0'; i++)
            ;
        if (n - i > 10) {
            x = UINT64_MAX;
        }
        else {
            for (; i < n; i++)
                x = x * 10 + (uint64_t)(a[i] - '0');
        }
        if (x > MAX_TOKENS) {
            r = want_reason(d)
                ? invalid_obj(d, "%s is implausibly large: %S", what, PyLong_FromString(a, NULL, 10))
                : 1;
            goto done;
        }
        *out = (int64_t)x;
        r = 0;
    }
    else {
        double x = PyOS_string_to_double(a, NULL, NULL); /* out of range: +-inf, as float() */
        if (x == -1.0 && PyErr_Occurred()) {
            r = -1;
        }
        else if (!isfinite(x) || x != trunc(x)) {
            r = want_reason(d) ? invalid_obj(d, "%s is not a whole number: %R", what, Py_NewRef(val)) : 1;
        }
        else if (x < 0.0) {
            r = invalid_int_of(d, "%s is negative: %S", what, x);
        }
        else if (x > MAX_TOKENS) {
            r = invalid_int_of(d, "%s is implausibly large: %S", what, x);
        }
        else {
            *out = (int64_t)x;
            r = 0;
        }
    }
done:
    Py_XDECREF(s);
    Py_DECREF(val);
    return r;
}

/* A token or output count: a whole number in [0, MAX_TOKENS]. */
static int
check_count(Decoder *d, const AnyValue *v, const char *what, int64_t *out)
{
    switch (v->type) {
    case AV_INT:
        if (v->i < 0)
            return invalid(d, "%s is negative: %lld", what, (long long)v->i);
        if (v->i > MAX_TOKENS)
            return invalid(d, "%s is implausibly large: %lld", what, (long long)v->i);
        *out = v->i;
        return 0;
    case AV_DOUBLE:
        if (!isfinite(v->x) || v->x != trunc(v->x))
            return invalid_float(d, "%s is not a whole number: %R", what, v->x);
        if (v->x < 0.0)
            return invalid_int_of(d, "%s is negative: %S", what, v->x);
        if (v->x > MAX_TOKENS)
            return invalid_int_of(d, "%s is implausibly large: %S", what, v->x);
        *out = (int64_t)v->x;
        return 0;
    case AV_STRING:
        return count_of_string(d, v, what, out);
    default:
        return invalid(d, "%s is not a number", what);
    }
}

/* A latency: a finite number of seconds >= 0 (an integer counts). */
static int
check_seconds(Decoder *d, const AnyValue *v, const char *what, double *out)
{
    double x;
    if (v->type == AV_DOUBLE)
        x = v->x;
    else if (v->type == AV_INT)
        x = (double)v->i;
    else
        return invalid(d, "%s is not a number", what);
    if (!isfinite(x))
        return invalid_float(d, "%s is not finite: %R", what, x);
    if (x < 0.0)
        return invalid_float(d, "%s is negative: %R", what, x);
    *out = x;
    return 0;
}

/* The string an attribute holds, or empty if it is absent or holds another type. */
static inline void
string_attr(const Span *s, int a, const uint8_t **p, size_t *n)
{
    if ((s->present >> a) & 1 && s->attr[a].type == AV_STRING) {
        *p = s->attr[a].s;
        *n = s->attr[a].n;
    }
    else {
        *p = NULL;
        *n = 0;
    }
}

static int
note_rejected(Decoder *d, const Span *s)
{
    PyObject *id, *msg;
    d->rejected++;
    if (d->reason == NULL)
        return 0;
    if (s->sid_n == 0)
        id = PyUnicode_FromString("(no id)");
    else if (s->sid_n <= MAX_ID_BYTES_IN_ERRORS)
        id = hex_id(s->sid, s->sid_n);
    else {
        PyObject *head = hex_id(s->sid, MAX_ID_BYTES_IN_ERRORS);
        id = head == NULL ? NULL : PyUnicode_FromFormat("%U...", head);
        Py_XDECREF(head);
    }
    if (id == NULL)
        return -1;
    msg = PyUnicode_FromFormat("span %U: %U", id, d->reason);
    Py_DECREF(id);
    Py_CLEAR(d->reason);
    if (msg == NULL)
        return -1;
    if (PyList_Append(d->errors, msg) < 0) {
        Py_DECREF(msg);
        return -1;
    }
    Py_DECREF(msg);
    return 0;
}

static Row *
new_row(Decoder *d)
{
    if (d->nrows == d->cap) {
        Py_ssize_t cap = d->cap * 2;
        if (d->cap > PY_SSIZE_T_MAX / 2 / (Py_ssize_t)sizeof(Row)) {
            PyErr_NoMemory();
            return NULL;
        }
        if (_PyBytes_Resize(&d->rows, cap * (Py_ssize_t)sizeof(Row)) < 0)
            return NULL; /* d->rows is NULL now */
        d->cap = cap;
    }
    return (Row *)PyBytes_AS_STRING(d->rows) + d->nrows++;
}

/* Count the span as ignored, rejected or accepted (a row and a request id). */
static int
judge_span(Decoder *d, const Span *s)
{
    const double nan = absent();
    int pk, ck, kind = KIND_TEXT, r;
    int64_t prompt = 0, completion = 0, count = 0;
    double lat[4];
    static const int LAT_ATTRS[4] = {A_QUEUE, A_PREFILL, A_DECODE, A_TTFT};
    const uint8_t *sp;
    size_t sn;
    PyObject *rid;
    int32_t model, pod;
    Row *row;
    int i;

    pk = (s->present >> A_PROMPT) & 1 ? A_PROMPT : (s->present >> A_INPUT) & 1 ? A_INPUT : -1;
    ck = (s->present >> A_COMPLETION) & 1 ? A_COMPLETION : (s->present >> A_OUTPUT) & 1 ? A_OUTPUT : -1;
    string_attr(s, A_OUTPUT_TYPE, &sp, &sn);
    if (bytes_eq(sp, sn, "image", 5))
        kind = KIND_IMAGE;
    else if (bytes_eq(sp, sn, "video", 5))
        kind = KIND_VIDEO;
    if (pk < 0 && ck < 0 && kind == KIND_TEXT
        && !bytes_eq(s->name, s->name_n, LLM_REQUEST, sizeof(LLM_REQUEST) - 1)) {
        d->ignored++;
        return 0;
    }

    r = 0;
    if (pk >= 0)
        r = check_count(d, &s->attr[pk], "prompt tokens", &prompt);
    if (r == 0 && ck >= 0)
        r = check_count(d, &s->attr[ck], "completion tokens", &completion);
    for (i = 0; i < 4; i++)
        lat[i] = nan;
    for (i = 0; i < 4 && r == 0; i++) {
        int a = LAT_ATTRS[i];
        if ((s->present >> a) & 1)
            r = check_seconds(d, &s->attr[a], ATTR_KEYS[a], &lat[i]);
    }
    if (r == 0 && s->tid_n != 16)
        r = invalid(d, "trace id is %zd bytes, not 16", (Py_ssize_t)s->tid_n);
    if (r == 0 && s->sid_n != 8)
        r = invalid(d, "span id is %zd bytes, not 8", (Py_ssize_t)s->sid_n);
    if (r == 0 && !(0 < s->start && s->start <= s->end)) {
        if (s->start == 0 || s->end == 0)
            r = invalid(d, "start or end time is missing");
        else
            r = invalid(d, "end time is before start time");
    }
    if (r == 0 && kind != KIND_TEXT) {
        int a = (s->present >> A_CHOICE_COUNT) & 1 ? A_CHOICE_COUNT : (s->present >> A_N) & 1 ? A_N : -1;
        count = 1;
        if (a >= 0) {
            r = check_count(d, &s->attr[a], ATTR_KEYS[a], &count);
            if (r == 0 && count < 1)
                r = invalid(d, "%s must be at least 1 for image/video output", ATTR_KEYS[a]);
        }
    }
    if (r < 0)
        return -1;
    if (r > 0)
        return note_rejected(d, s);

    string_attr(s, A_REQUEST_ID, &sp, &sn);
    if (sn == 0)
        string_attr(s, A_RESPONSE_ID, &sp, &sn);
    rid = sn == 0 ? hex_id(s->sid, 8) : text(d, sp, sn, MAX_REQUEST_ID_CHARS, "a request id");
    if (rid == NULL)
        return -1;

    string_attr(s, A_RESPONSE_MODEL, &sp, &sn);
    if (sn == 0)
        string_attr(s, A_REQUEST_MODEL, &sp, &sn);
    model = sn == 0 ? fallback_model(d) : model_of_bytes(d, sp, sn);
    pod = model < 0 ? -2 : resource_pod(d);
    if (pod < -1 || (row = new_row(d)) == NULL) {
        Py_DECREF(rid);
        return -1;
    }
    row->start = (double)s->start / 1e9;
    row->end = (double)s->end / 1e9;
    row->queue_s = lat[0];
    row->prefill_s = lat[1];
    row->decode_s = lat[2];
    row->ttft_s = lat[3];
    row->prompt_tokens = prompt;
    row->completion_tokens = completion;
    row->output_count = count;
    memcpy(row->trace_id, s->tid, 16);
    memcpy(row->span_id, s->sid, 8);
    row->model = model;
    row->pod = pod;
    row->output_kind = (int8_t)kind;
    memset(row->pad, 0, sizeof row->pad);

    r = PyList_Append(d->request_ids, rid);
    Py_DECREF(rid);
    return r;
}

/* ---------------------------------------------------------------------------------------------
 * Messages, outermost last */

static int
decode_span(Decoder *d, const uint8_t *p, const uint8_t *end)
{
    Span s;
    Field f;
    KeyValue kv;
    int r, a;

    s.tid = s.sid = s.name = NULL;
    s.tid_n = s.sid_n = s.name_n = 0;
    s.start = s.end = 0;
    s.present = 0;
    while ((r = next_field(d, &p, end, &f)) > 0) {
        if (f.num == 9) {
            EXPECT(d, f, WT_LEN, "Span.attributes");
            if (scan_keyvalue(d, f.p, f.p + f.n, &kv) < 0)
                return -1;
            a = attr_index(kv.key, kv.key_n);
            if (a >= 0) {
                if (read_value(d, f.p, f.p + f.n, &kv, &s.attr[a]) < 0)
                    return -1;
                s.present |= UINT32_C(1) << a;
            }
            continue;
        }
        switch (f.num) {
        case 1:
            EXPECT(d, f, WT_LEN, "Span.trace_id");
            s.tid = f.p;
            s.tid_n = f.n;
            break;
        case 2:
            EXPECT(d, f, WT_LEN, "Span.span_id");
            s.sid = f.p;
            s.sid_n = f.n;
            break;
        case 5:
            EXPECT(d, f, WT_LEN, "Span.name");
            s.name = f.p;
            s.name_n = f.n;
            break;
        case 7:
            EXPECT(d, f, WT_I64, "Span.start_time_unix_nano");
            s.start = f.v;
            break;
        case 8:
            EXPECT(d, f, WT_I64, "Span.end_time_unix_nano");
            s.end = f.v;
            break;
        default:
            break;
        }
    }
    if (r < 0)
        return -1;
    return judge_span(d, &s);
}

static int
decode_scope_spans(Decoder *d, const uint8_t *p, const uint8_t *end)
{
    Field f;
    int r;
    while ((r = next_field(d, &p, end, &f)) > 0) {
        if (f.num == 2) {
            EXPECT(d, f, WT_LEN, "ScopeSpans.spans");
            if (decode_span(d, f.p, f.p + f.n) < 0)
                return -1;
        }
    }
    return r;
}

/* A Resource's service.name, k8s.pod.name and k8s.namespace.name, into d (the last one wins). */
static int
scan_resource(Decoder *d, const uint8_t *p, const uint8_t *end)
{
    Field f;
    KeyValue kv;
    int r;
    while ((r = next_field(d, &p, end, &f)) > 0) {
        if (f.num == 1) {
            EXPECT(d, f, WT_LEN, "Resource.attributes");
            if (scan_keyvalue(d, f.p, f.p + f.n, &kv) < 0)
                return -1;
            AnyValue *into = bytes_eq(kv.key, kv.key_n, SERVICE_NAME, sizeof(SERVICE_NAME) - 1) ? &d->service
                : bytes_eq(kv.key, kv.key_n, POD_NAME, sizeof(POD_NAME) - 1) ? &d->pod_name
                : bytes_eq(kv.key, kv.key_n, POD_NAMESPACE, sizeof(POD_NAMESPACE) - 1) ? &d->pod_namespace
                : NULL;
            if (into != NULL && read_value(d, f.p, f.p + f.n, &kv, into) < 0)
                return -1;
        }
    }
    return r;
}

static int
decode_resource_spans(Decoder *d, const uint8_t *p, const uint8_t *end)
{
    const uint8_t *q = p;
    Field f;
    int r;

    /* The resource may follow its spans on the wire, or come in several parts: read it first. */
    d->service.type = d->pod_name.type = d->pod_namespace.type = AV_NONE;
    d->fallback_index = -1;
    d->resource_pod = -2;
    while ((r = next_field(d, &q, end, &f)) > 0) {
        if (f.num == 1) {
            EXPECT(d, f, WT_LEN, "ResourceSpans.resource");
            if (scan_resource(d, f.p, f.p + f.n) < 0)
                return -1;
        }
        else if (f.num == 2) {
            EXPECT(d, f, WT_LEN, "ResourceSpans.scope_spans");
        }
    }
    if (r < 0)
        return -1;
    while ((r = next_field(d, &p, end, &f)) > 0) {
        if (f.num == 2 && decode_scope_spans(d, f.p, f.p + f.n) < 0)
            return -1;
    }
    return r;
}

static int
decode_request(Decoder *d, const uint8_t *p, const uint8_t *end)
{
    Field f;
    int r;
    while ((r = next_field(d, &p, end, &f)) > 0) {
        if (f.num == 1) {
            EXPECT(d, f, WT_LEN, "ExportTraceServiceRequest.resource_spans");
            if (decode_resource_spans(d, f.p, f.p + f.n) < 0)
                return -1;
        }
    }
    return r;
}

/* ---------------------------------------------------------------------------------------------
 * Module */

PyDoc_STRVAR(decode_doc,
"decode(body, default_model, /)\n--\n\n"
"Read an OTLP/protobuf ExportTraceServiceRequest: (rows, models, pods, request_ids, rejected,\n"
"ignored, errors). rows holds one ROW_SIZE-byte row per request span (ROW_LAYOUT); each row's\n"
"model indexes models and its pod pods (-1: none); request_ids runs parallel to the rows.\n"
"Raises ValueError if the message itself is malformed.");

static PyObject *
otlpwire_decode(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Decoder d;
    Py_buffer view;
    Py_ssize_t cap;
    PyObject *result = NULL;
    const uint8_t *body;

    (void)module;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "decode() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    if (!PyUnicode_Check(args[1])) {
        PyErr_Format(PyExc_TypeError, "default_model must be str, not %.100s",
                     Py_TYPE(args[1])->tp_name);
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;

    memset(&d, 0, sizeof d);
    body = (const uint8_t *)view.buf;
    d.base = body;
    d.default_model = args[1];
    d.default_index = -1;
    d.fallback_index = -1;
    cap = view.len / 512; /* a vLLM request span is about 600 bytes */
    cap = cap < 16 ? 16 : cap > 65536 ? 65536 : cap;
    d.cap = cap;
    d.rows = PyBytes_FromStringAndSize(NULL, cap * (Py_ssize_t)sizeof(Row));
    d.models = PyList_New(0);
    d.model_index = PyDict_New();
    d.raw_models = PyDict_New();
    d.pods = PyList_New(0);
    d.pod_index = PyDict_New();
    d.request_ids = PyList_New(0);
    d.errors = PyList_New(0);
    if (d.rows == NULL || d.models == NULL || d.model_index == NULL || d.raw_models == NULL
        || d.pods == NULL || d.pod_index == NULL || d.request_ids == NULL || d.errors == NULL)
        goto done;

    if (decode_request(&d, body, body + view.len) < 0)
        goto done;
    if (_PyBytes_Resize(&d.rows, d.nrows * (Py_ssize_t)sizeof(Row)) < 0)
        goto done;

    result = PyTuple_New(7);
    if (result == NULL)
        goto done;
    PyTuple_SET_ITEM(result, 0, d.rows);
    PyTuple_SET_ITEM(result, 1, d.models);
    PyTuple_SET_ITEM(result, 2, d.pods);
    PyTuple_SET_ITEM(result, 3, d.request_ids);
    PyTuple_SET_ITEM(result, 6, d.errors);
    d.rows = d.models = d.pods = d.request_ids = d.errors = NULL;
    {
        PyObject *rejected = PyLong_FromSsize_t(d.rejected);
        PyObject *ignored = PyLong_FromSsize_t(d.ignored);
        if (rejected == NULL || ignored == NULL) {
            Py_XDECREF(rejected);
            Py_XDECREF(ignored);
            Py_CLEAR(result);
            goto done;
        }
        PyTuple_SET_ITEM(result, 4, rejected);
        PyTuple_SET_ITEM(result, 5, ignored);
    }

done:
    Py_XDECREF(d.rows);
    Py_XDECREF(d.models);
    Py_XDECREF(d.model_index);
    Py_XDECREF(d.raw_models);
    Py_XDECREF(d.pods);
    Py_XDECREF(d.pod_index);
    Py_XDECREF(d.request_ids);
    Py_XDECREF(d.errors);
    Py_XDECREF(d.reason);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef otlpwire_methods[] = {
    {"decode", (PyCFunction)(void (*)(void))otlpwire_decode, METH_FASTCALL, decode_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(module_doc,
"OTLP/protobuf trace export requests read straight off the wire into fixed-size request rows.");

static struct PyModuleDef otlpwire_module = {
    PyModuleDef_HEAD_INIT, "jouletrace.exporter.intake._otlpwire", module_doc, -1, otlpwire_methods,
    NULL, NULL, NULL, NULL,
};

static PyObject *
row_layout(void)
{
#define FIELD(name) {#name, offsetof(Row, name), sizeof(((Row *)0)->name)}
    static const struct {
        const char *name;
        size_t offset, size;
    } fields[] = {
        FIELD(start), FIELD(end), FIELD(queue_s), FIELD(prefill_s), FIELD(decode_s),
        FIELD(ttft_s), FIELD(prompt_tokens), FIELD(completion_tokens), FIELD(output_count),
        FIELD(trace_id), FIELD(span_id), FIELD(model), FIELD(pod), FIELD(output_kind),
    };
#undef FIELD
    size_t n = sizeof fields / sizeof fields[0], i;
    PyObject *t = PyTuple_New((Py_ssize_t)n);
    if (t == NULL)
        return NULL;
    for (i = 0; i < n; i++) {
        PyObject *item = Py_BuildValue("(snn)", fields[i].name, (Py_ssize_t)fields[i].offset,
                                       (Py_ssize_t)fields[i].size);
        if (item == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, (Py_ssize_t)i, item);
    }
    return t;
}

PyMODINIT_FUNC
PyInit__otlpwire(void)
{
    PyObject *m, *layout;
    const uint16_t one = 1;
    int a;

    if (*(const uint8_t *)&one != 1) {
        PyErr_SetString(PyExc_ImportError, "_otlpwire needs a little-endian machine");
        return NULL;
    }
    for (a = 0; a < N_ATTRS; a++) {
        if (attr_index((const uint8_t *)ATTR_KEYS[a], strlen(ATTR_KEYS[a])) != a) {
            PyErr_Format(PyExc_ImportError, "_otlpwire: attribute key table broken at %s",
                         ATTR_KEYS[a]);
            return NULL;
        }
    }
    m = PyModule_Create(&otlpwire_module);
    if (m == NULL)
        return NULL;
    layout = row_layout();
    if (layout == NULL || PyModule_AddObject(m, "ROW_LAYOUT", layout) < 0) {
        Py_XDECREF(layout);
        goto fail;
    }
    if (PyModule_AddIntConstant(m, "ROW_SIZE", (long)sizeof(Row)) < 0
        || PyModule_AddIntConstant(m, "MAX_TOKENS", MAX_TOKENS) < 0
        || PyModule_AddIntConstant(m, "MAX_MODEL_CHARS", MAX_MODEL_CHARS) < 0
        || PyModule_AddIntConstant(m, "MAX_REQUEST_ID_CHARS", MAX_REQUEST_ID_CHARS) < 0
        || PyModule_AddIntConstant(m, "MAX_POD_NAME_CHARS", MAX_POD_NAME_CHARS) < 0
        || PyModule_AddIntConstant(m, "MAX_ERRORS", MAX_ERRORS) < 0)
        goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
