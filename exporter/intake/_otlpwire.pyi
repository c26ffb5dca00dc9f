"""Types of the C extension built from _otlpwire.c: the OTLP/protobuf span decoder (see otlp.py)."""

ROW_SIZE: int  # bytes of one row, REQUEST_DTYPE's itemsize
ROW_LAYOUT: tuple[tuple[str, int, int], ...]  # (field, offset, size) of each row field
MAX_TOKENS: int
MAX_MODEL_CHARS: int
MAX_REQUEST_ID_CHARS: int
MAX_POD_NAME_CHARS: int
MAX_ERRORS: int

def decode(
    body: bytes | bytearray | memoryview, default_model: str, /
) -> tuple[bytes, list[str], list[str], list[str], int, int, list[str]]:
    """Decode an ExportTraceServiceRequest: (rows, models, pods, request ids, spans rejected,
    spans ignored, error messages). Raises ValueError if the message is malformed."""
