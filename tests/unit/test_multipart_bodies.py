"""The embedded ClickHouse's reading of multipart/form-data bodies (RFC 7578), as clients send them."""

from __future__ import annotations

import pytest
from urllib3 import encode_multipart_formdata

from clickhouse_local.bodies import parse_multipart
from clickhouse_local.errors import ClickHouseError


def test_fields_and_files_come_back_in_order_byte_for_byte():
    file_bytes = b"1\t2\r\n\r\n--not-the-boundary\r\n\x00\xff"
    body, content_type = encode_multipart_formdata([
        ("param_ids", "[1,2,3]"),
        ("query", "SELECT {ids:Array(UInt8)}\r\n"),
        ("ext", ("ext.tsv", file_bytes, "text/plain")),
        ("param_empty", ""),
    ])
    assert parse_multipart(content_type, body) == [
        ("param_ids", None, b"[1,2,3]"),
        ("query", None, b"SELECT {ids:Array(UInt8)}\r\n"),
        ("ext", "ext.tsv", file_bytes),
        ("param_empty", None, b""),
    ]


def test_quoted_boundary_bare_line_feeds_and_quoted_names():
    body = (b'preamble\n--b"x\n'
            b'Content-Disposition: form-data; name="a\\"b;c"; filename="f; \\\\1.tsv"\n\n'
            b'one\ntwo\n'
            b'--b"x\nContent-Type: text/plain\n\nno name\n'
            b'--b"x\nCONTENT-DISPOSITION: form-data;name=plain\n\nthree\n'
            b'--b"x--\nepilogue')
    assert parse_multipart('multipart/form-data; boundary="b\\"x"', body) == [
        ('a"b;c', "f; \\1.tsv", b"one\ntwo"),
        ("plain", None, b"three"),
    ]


def test_the_boundary_inside_a_line_of_data_is_data():
    data = b"a--xyz\r\n x--xyz--\r\n--xyzz\r\n\r\n"
    body = (b"--xyz\r\nContent-Disposition: form-data; name=\"f\"; filename=\"f.bin\"\r\n\r\n" + data
            + b"\r\n--xyz--\r\n")
    assert parse_multipart("multipart/form-data; boundary=xyz", body) == [("f", "f.bin", data)]


@pytest.mark.parametrize("content_type, body", [
    ("multipart/form-data", b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--x--\r\n"),
    ("multipart/form-data; boundary=x", b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n"),
    ("multipart/form-data; boundary=x", b"no delimiter at all"),
], ids=["no boundary", "no closing delimiter", "no delimiter"])
def test_a_body_that_is_not_a_whole_form_is_refused(content_type, body):
    with pytest.raises(ClickHouseError) as refused:
        parse_multipart(content_type, body)
    assert refused.value.name == "BAD_ARGUMENTS"
    assert "multipart/form-data" in str(refused.value)
