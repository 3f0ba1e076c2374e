"""Bodies over HTTP: a request's framing (Content-Length or chunked) and content encoding, multipart forms, and an
answer's compression and Content-Type."""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import lz4.frame
import zstandard

from clickhouse_local.errors import ClickHouseError

try:
    import brotli
except ImportError:
    brotli = None

_READ_CHUNK = 1 << 20
# Preference of response encodings, as ClickHouse chooses from Accept-Encoding.
_RESPONSE_ENCODINGS = ("zstd", "br", "lz4", "gzip", "deflate", "xz", "bz2")
_BINARY_FORMATS = frozenset(
    {
        "native", "rowbinary", "rowbinarywithnames", "rowbinarywithnamesandtypes", "rowbinarywithdefaults",
        "parquet", "arrow", "arrowstream", "orc", "avro", "protobuf", "protobufsingle", "protobuflist",
        "capnproto", "msgpack", "npy", "bsoneachrow", "rawblob",
    }
)


class RequestBody:
    """The raw bytes of a request body, framed by Content-Length or the chunked transfer coding."""

    def __init__(self, rfile: Any, headers: Any) -> None:
        self._rfile = rfile
        self._chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        self.has_length = self._chunked or headers.get("Content-Length") is not None
        self._remaining = 0
        if not self._chunked and headers.get("Content-Length") is not None:
            try:
                self._remaining = int(headers["Content-Length"])
            except ValueError:
                raise ClickHouseError.named("BAD_ARGUMENTS", "Invalid Content-Length header") from None
            if self._remaining < 0:
                raise ClickHouseError.named("BAD_ARGUMENTS", "Invalid Content-Length header")
        self.exhausted = not self._chunked and self._remaining == 0
        self._chunk_left = 0

    def chunks(self) -> Iterator[bytes]:
        """The body's bytes as they arrive, in pieces of at most 1 MiB."""
        while not self.exhausted:
            piece = self._read_chunked() if self._chunked else self._read_sized()
            if piece:
                yield piece

    def drain(self) -> None:
        """Reads and drops what is left, so the connection can carry the next request."""
        for _ in self.chunks():
            pass

    def _read_exact(self, size: int) -> bytes:
        data = self._rfile.read(size)
        if len(data) < size:
            raise ConnectionError("the client closed the connection in the middle of the request body")
        return data

    def _read_sized(self) -> bytes:
        piece = self._read_exact(min(self._remaining, _READ_CHUNK))
        self._remaining -= len(piece)
        self.exhausted = self._remaining == 0
        return piece

    def _read_chunked(self) -> bytes:
        if self._chunk_left == 0:
            line = self._rfile.readline(1 << 16)
            if not line:
                raise ConnectionError("the client closed the connection in the middle of the request body")
            try:
                self._chunk_left = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ClickHouseError.named("BAD_ARGUMENTS", "Invalid chunk size in the request body") from None
            if self._chunk_left == 0:
                while self._rfile.readline(1 << 16) not in (b"\r\n", b"\n", b""):
                    pass  # trailer fields
                self.exhausted = True
                return b""
        piece = self._read_exact(min(self._chunk_left, _READ_CHUNK))
        self._chunk_left -= len(piece)
        if self._chunk_left == 0:
            self._read_exact(2)  # the CRLF after the chunk
        return piece


class _BrotliFrame:
    """brotli's decompressor with the eof/unused_data shape of the standard library's decompressors."""

    unused_data = b""

    def __init__(self) -> None:
        self._decompressor = brotli.Decompressor()

    def decompress(self, data: bytes) -> bytes:
        return self._decompressor.process(data)

    @property
    def eof(self) -> bool:
        return self._decompressor.is_finished()


_REQUEST_DECODERS: dict[str, Callable[[], Any]] = {
    "gzip": lambda: zlib.decompressobj(16 + zlib.MAX_WBITS),
    "x-gzip": lambda: zlib.decompressobj(16 + zlib.MAX_WBITS),
    "deflate": zlib.decompressobj,
    "zstd": lambda: zstandard.ZstdDecompressor().decompressobj(),
    "lz4": lz4.frame.LZ4FrameDecompressor,
    "xz": lzma.LZMADecompressor,
    "bz2": bz2.BZ2Decompressor,
}
if brotli is not None:
    _REQUEST_DECODERS["br"] = _BrotliFrame
# What the decompressors raise on bad input (lz4 raises RuntimeError).
_DECOMPRESSION_ERRORS = (zlib.error, lzma.LZMAError, zstandard.ZstdError, OSError, EOFError, RuntimeError, ValueError)


def decoded(chunks: Iterator[bytes], encoding: str) -> Iterator[bytes]:
    """The chunks decompressed by Content-Encoding `encoding`, which may hold several frames one after another."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        yield from chunks
        return
    new_frame = _REQUEST_DECODERS.get(encoding)
    if new_frame is None:
        raise ClickHouseError.named(
            "NOT_IMPLEMENTED", f"Unknown HTTP Content-Encoding of the request body: {encoding}"
        )
    frame = None
    for chunk in chunks:
        while chunk:
            try:
                if frame is None:
                    frame = new_frame()
                output = frame.decompress(chunk)
            except _DECOMPRESSION_ERRORS as exc:
                raise ClickHouseError.named(
                    "CANNOT_DECOMPRESS", f"Cannot decompress the request body ({encoding}): {exc}"
                ) from None
            if frame.eof:
                chunk, frame = frame.unused_data, None
            else:
                chunk = b""
            if output:
                yield output
    if frame is not None:
        raise ClickHouseError.named(
            "CANNOT_DECOMPRESS", f"Cannot decompress the request body ({encoding}): it ends in the middle of a frame"
        )


def response_encoding(accept_encoding: str) -> str | None:
    """The encoding ClickHouse would pick from an Accept-Encoding header, among those available here."""
    offered = set()
    for item in accept_encoding.lower().split(","):
        name, _, parameters = item.strip().partition(";")
        quality = parameters.strip().removeprefix("q=") if parameters.strip().startswith("q=") else "1"
        try:
            if float(quality) > 0:
                offered.add(name.strip())
        except ValueError:
            offered.add(name.strip())
    for encoding in _RESPONSE_ENCODINGS:
        if encoding in offered and (encoding != "br" or brotli is not None):
            return encoding
    return None


def compressed(body: bytes, encoding: str, level: int) -> bytes:
    """`body` as one frame of `encoding`; `level` is the setting http_zlib_compression_level."""
    if encoding == "zstd":
        return zstandard.ZstdCompressor(level=min(max(level, 1), 22)).compress(body)
    if encoding == "lz4":
        return lz4.frame.compress(body)
    if encoding == "gzip":
        return gzip.compress(body, compresslevel=min(max(level, 0), 9), mtime=0)
    if encoding == "deflate":
        return zlib.compress(body, min(max(level, 0), 9))
    if encoding == "xz":
        return lzma.compress(body, preset=min(max(level, 0), 9))
    if encoding == "bz2":
        return bz2.compress(body, min(max(level, 1), 9))
    return brotli.compress(body, quality=min(max(level, 0), 11))


def content_type(output_format: str) -> str:
    """The Content-Type ClickHouse gives an answer in `output_format`."""
    name = output_format.lower()
    if name.startswith(("tabseparated", "tsv")):
        return "text/tab-separated-values; charset=UTF-8"
    if name.startswith("csv"):
        return f"text/csv; charset=UTF-8; header={'present' if 'withnames' in name else 'absent'}"
    if name in ("jsoneachrow", "jsonlines", "ndjson", "jsonstringseachrow"):
        return "application/x-ndjson; charset=UTF-8"
    if name.startswith("json") and "eachrow" not in name:
        return "application/json; charset=UTF-8"
    if name == "xml":
        return "application/xml; charset=UTF-8"
    if name in _BINARY_FORMATS:
        return "application/octet-stream"
    return "text/plain; charset=UTF-8"


def parse_multipart(content_type_header: str, body: bytes) -> list[tuple[str, str | None, bytes]]:
    """The parts of a multipart/form-data body (RFC 7578) as (field name, file name or None, bytes), in order; parts
    without a field name are left out. Lines may end in CRLF or a bare LF; a boundary inside a line is data."""
    boundary = _header_parameters(content_type_header).get("boundary", "").encode("latin-1")
    if not boundary:
        raise ClickHouseError.named("BAD_ARGUMENTS", "Cannot parse the multipart/form-data request body: no boundary")
    delimiter = re.compile(rb"--" + re.escape(boundary) + rb"(--)?[ \t]*(?:\r?\n|$)")
    found = _delimiter_line(delimiter, body, 0)
    parts = []
    while found is not None and found.group(1) is None:
        following = _delimiter_line(delimiter, body, found.end())
        if following is None:
            break
        # The line break before a delimiter (LF or CRLF) belongs to the delimiter.
        data_end = following.start() - 1
        if body[data_end - 1:data_end] == b"\r":
            data_end -= 1
        name, file_name, data = _form_part(body[found.end():max(found.end(), data_end)])
        if name:
            parts.append((name, file_name, data))
        found = following
    if found is None or found.group(1) is None:
        raise ClickHouseError.named("BAD_ARGUMENTS", "Cannot parse the multipart/form-data request body")
    return parts


def _delimiter_line(delimiter: re.Pattern[bytes], body: bytes, start: int) -> re.Match[bytes] | None:
    """The first match of `delimiter` at or after `start` that begins a line."""
    found = delimiter.search(body, start)
    while found is not None and found.start() > 0 and body[found.start() - 1] != 0x0A:
        found = delimiter.search(body, found.start() + 1)
    return found


def _form_part(part: bytes) -> tuple[str | None, str | None, bytes]:
    """A part's field name and file name, from its Content-Disposition header, and the bytes after its headers."""
    blank_line = _BLANK_LINE.search(part)
    headers, data = (part, b"") if blank_line is None else (part[:blank_line.start()], part[blank_line.end():])
    for line in headers.decode("utf-8", "replace").splitlines():
        header, _, value = line.partition(":")
        if header.strip().lower() == "content-disposition":
            parameters = _header_parameters(value)
            return parameters.get("name"), parameters.get("filename"), data
    return None, None, data


def _header_parameters(value: str) -> dict[str, str]:
    """The `; name=value` parameters of a header's value, names in lower case, quoted strings unquoted."""
    return {name.lower(): _QUOTED_PAIR.sub(r"\1", quoted) if quoted else plain.strip()
            for name, quoted, plain in _PARAMETER.findall(value)}


_BLANK_LINE = re.compile(rb"(?:^|\r?\n)\r?\n")
_PARAMETER = re.compile(r';\s*([^\s=;]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;]*))')
_QUOTED_PAIR = re.compile(r"\\(.)")
