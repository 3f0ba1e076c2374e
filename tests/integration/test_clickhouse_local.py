"""`rulesctl clickhouse-local`: the embedded ClickHouse answers clickhouse-connect and curl as ClickHouse does."""

from __future__ import annotations

import base64
import datetime
import gzip
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from decimal import Decimal

import clickhouse_connect
import lz4.frame
import pytest
import zstandard
from clickhouse_connect.driver.exceptions import DatabaseError
from clickhouse_connect.driver.summary import QuerySummary

from tests.conftest import RULESCTL, free_port, start_clickhouse_local, stop_process

COLUMNS = (
    "id UInt32, amount Decimal(18, 4), day Date, seen DateTime, channel LowCardinality(String), "
    "placements Array(UInt32), token UUID, note String, budget Nullable(Int64)"
)
ROWS = [
    [1, Decimal("12.3456"), datetime.date(2024, 1, 2), datetime.datetime(2024, 1, 2, 3, 4, 5), "search",
     [1, 2, 3], uuid.UUID(int=5), "tab\there 'quote' back\\slash", None],
    [2, Decimal("-99999999999999.9999"), datetime.date(1970, 1, 1), datetime.datetime(2037, 12, 31, 23, 59, 59),
     "social", [], uuid.UUID("8ac57008-2897-45e3-b989-3b3ca51e398d"), "", -7],
    [3, Decimal("0.0001"), datetime.date(2149, 6, 6), datetime.datetime(1970, 1, 1, 0, 0, 1), "search",
     [4294967295], uuid.UUID(int=0), "ünïcødé ✓", 9223372036854775807],
]


def http(base_url: str, params: dict | None = None, body: bytes | None = None, headers: dict | None = None,
         method: str | None = None, path: str = "/") -> tuple[int, dict, bytes]:
    """One HTTP request; returns the status, the headers and the body, whatever the status."""
    url = base_url + path + ("?" + urllib.parse.urlencode(params) if params else "")
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def answer(base_url: str, *args, **kwargs) -> tuple[int, bytes]:
    """The status and body of one HTTP request."""
    status, _, body = http(base_url, *args, **kwargs)
    return status, body


def curl(*args: str) -> str:
    return subprocess.run(["curl", "-s", *args], check=True, capture_output=True, text=True, timeout=30).stdout


@pytest.fixture
def base_url(clickhouse_local) -> str:
    """The address of the session's embedded ClickHouse."""
    return clickhouse_local.base_url


# --- clickhouse-connect -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False], ids=["compressed", "plain"])
def test_rows_of_several_types_come_back_exactly(clickhouse_local, ch_database, compress):
    client = clickhouse_local.client(ch_database, compress=compress)
    try:
        assert bool(client.write_compression) is compress
        client.command(f"CREATE TABLE t ({COLUMNS}) ENGINE = MergeTree ORDER BY id")
        summary = client.insert("t", ROWS)
        assert summary.written_rows == len(ROWS)
        result = client.query("SELECT * FROM t ORDER BY id")
        names = ("id", "amount", "day", "seen", "channel", "placements", "token", "note", "budget")
        assert result.column_names == names
        assert result.result_rows == [tuple(row) for row in ROWS]
    finally:
        client.close()


def test_default_client_from_host_and_port_alone(clickhouse_local):
    client = clickhouse_connect.get_client(host=clickhouse_local.host, port=clickhouse_local.port)
    try:
        version, timezone = client.query("SELECT version(), timezone()").result_rows[0]
        assert client.server_version == version
        assert client.query("SELECT number * 2 FROM numbers(3)").result_rows == [(0,), (2,), (4,)]
    finally:
        client.close()


@pytest.mark.parametrize("compress", [True, False], ids=["compressed", "plain"])
def test_a_large_insert_arrives_whole(clickhouse_local, ch_database, compress):
    client = clickhouse_local.client(ch_database, compress=compress)
    try:
        client.command("CREATE TABLE big (id UInt64, label String, cost Decimal(18, 4)) ENGINE = MergeTree ORDER BY id")
        rows = [[i, f"label-{i % 97}", Decimal(i) / 10000] for i in range(250_000)]
        client.insert("big", rows, column_names=["id", "label", "cost"])
        count, id_sum, cost_sum, labels = client.query(
            "SELECT count(), sum(id), sum(cost), uniqExact(label) FROM big"
        ).result_rows[0]
        assert (count, id_sum, labels) == (250_000, sum(range(250_000)), 97)
        assert cost_sum == Decimal(sum(range(250_000))) / 10000
    finally:
        client.close()


def test_server_side_parameters(ch):
    assert ch.query("SELECT {x:String}", parameters={"x": "a'b\\c"}).result_rows == [("a'b\\c",)]
    assert ch.query("SELECT {n:UInt32} + 1", parameters={"n": 41}).result_rows == [(42,)]
    assert ch.query("SELECT {d:Date}", parameters={"d": datetime.date(2024, 2, 29)}).result_rows == [
        (datetime.date(2024, 2, 29),)
    ]


def test_parameters_too_long_for_the_url_go_in_a_form(ch):
    ids = list(range(5000))  # clickhouse-connect sends these as multipart/form-data
    result = ch.query("SELECT length({ids:Array(UInt32)}), arraySum({ids:Array(UInt32)})", parameters={"ids": ids})
    assert result.result_rows == [(5000, sum(ids))]


def test_settings_apply_to_their_query_only(ch, base_url):
    query = "SELECT getSetting('max_execution_time')"
    assert ch.query(query, settings={"max_execution_time": 5}).result_rows == [(5,)]
    assert ch.query(query).result_rows == [(0,)]
    assert ch.command("SELECT getSetting('max_threads')", settings={"max_threads": 3}) == 3
    assert ch.command("SELECT getSetting('max_threads')") != 3

    status, _, body = http(base_url, {"max_threads": "3"}, b"SELECT getSetting('max_threads')")
    assert (status, body) == (200, b"3\n")
    status, _, body = http(base_url, None, b"SELECT getSetting('max_threads')")
    assert status == 200 and body != b"3\n"


def test_a_setting_ends_a_query_that_runs_too_long(ch):
    with pytest.raises(DatabaseError) as raised:
        ch.query("SELECT sleep(2)", settings={"max_execution_time": 1})
    assert raised.value.code == 159


def test_command(ch):
    assert isinstance(ch.command("CREATE TABLE c (a UInt8) ENGINE = MergeTree ORDER BY a"), QuerySummary)
    ch.command("INSERT INTO c VALUES (1), (2), (3)")
    assert ch.command("SELECT count() FROM c") == 3
    assert ch.command("SELECT min(a), max(a) FROM c") == ["1", "3"]
    assert ch.command("SELECT a FROM c WHERE a > 10") == ""


def test_the_session_keeps_a_temporary_table_and_a_set(base_url):
    session = {"session_id": f"s-{uuid.uuid4()}"}
    assert http(base_url, session, b"CREATE TEMPORARY TABLE scratch (a UInt8)")[0] == 200
    assert http(base_url, session, b"INSERT INTO scratch VALUES (7)")[0] == 200
    assert http(base_url, session, b"SET max_threads = 3")[0] == 200
    assert http(base_url, session, b"SELECT a, getSetting('max_threads') FROM scratch")[2] == b"7\t3\n"
    assert http(base_url, {**session, "max_threads": "1"}, b"SELECT getSetting('max_threads')")[2] == b"1\n"
    assert http(base_url, session, b"SELECT getSetting('max_threads')")[2] == b"3\n"
    status, headers, _ = http(base_url, {"session_id": f"s-{uuid.uuid4()}"}, b"SELECT a FROM scratch")
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (404, "60")


def test_request_settings_stay_with_their_requests_however_they_follow_each_other(base_url):
    session = {"session_id": f"s-{uuid.uuid4()}"}
    threads = b"SELECT getSetting('max_threads'), getSetting('max_block_size')"
    assert http(base_url, session, b"SET max_threads = 3")[0] == 200
    assert http(base_url, {**session, "max_threads": "1"}, threads)[2] == b"1\t65409\n"
    assert http(base_url, {**session, "max_threads": "1"}, threads)[2] == b"1\t65409\n"
    assert http(base_url, {**session, "max_threads": "2"}, threads)[2] == b"2\t65409\n"
    assert http(base_url, {**session, "max_block_size": "100"}, threads)[2] == b"3\t100\n"
    assert http(base_url, session, threads)[2] == b"3\t65409\n"
    # A SET in a request with settings of its own changes the session; the request's settings still end with it.
    assert http(base_url, {**session, "max_threads": "1"}, b"SET max_block_size = 500")[0] == 200
    assert http(base_url, {**session, "max_threads": "1"}, threads)[2] == b"1\t500\n"
    assert http(base_url, session, threads)[2] == b"3\t500\n"


def test_a_session_follows_the_database_each_request_names(base_url):
    first, second = f"d1_{uuid.uuid4().hex[:8]}", f"d2_{uuid.uuid4().hex[:8]}"
    for name in (first, second):
        assert http(base_url, None, f"CREATE DATABASE {name}".encode())[0] == 200
    try:
        session = {"session_id": f"s-{uuid.uuid4()}"}
        current = b"SELECT currentDatabase()"
        assert http(base_url, {**session, "database": first}, current)[2] == f"{first}\n".encode()
        assert http(base_url, {**session, "database": first}, f"USE {second}".encode())[0] == 200
        assert http(base_url, session, current)[2] == f"{second}\n".encode()
        assert http(base_url, {**session, "database": first}, current)[2] == f"{first}\n".encode()
        assert http(base_url, {**session, "database": second}, current)[2] == f"{second}\n".encode()
    finally:
        for name in (first, second):
            http(base_url, None, f"DROP DATABASE IF EXISTS {name}".encode())


# --- errors -------------------------------------------------------------------------------------------------------


def test_an_unknown_table_is_error_60(ch, base_url):
    with pytest.raises(DatabaseError) as raised:
        ch.query("SELECT * FROM no_such_table")
    assert raised.value.code == 60
    assert "Code: 60" in str(raised.value) and "UNKNOWN_TABLE" in str(raised.value)

    status, headers, body = http(base_url, {"query": "SELECT * FROM no_such_table"})
    assert status == 404
    assert headers["X-ClickHouse-Exception-Code"] == "60"
    assert body.startswith(b"Code: 60. DB::Exception: ") and b"(UNKNOWN_TABLE) (version " in body


def test_statement_errors_as_clickhouse_answers_them(base_url):
    status, headers, body = http(base_url, None, b"  -- nothing but a comment\n")
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (400, "62") and b"Empty query" in body
    status, headers, _ = http(base_url, None, b"SELECT 1; SELECT 2")
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (400, "62")
    assert answer(base_url, None, b"SELECT 1;") == (200, b"1\n")
    status, headers, _ = http(base_url, {"query": "SELECT 1", "no_such_setting": "1"})
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (404, "115")
    status, headers, body = http(base_url, {"query": "CREATE TABLE default.by_get (a UInt8) ENGINE = Memory"})
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (500, "164") and b"method GET implies readonly" in body
    assert http(base_url, path="/no/such/handler")[0] == 404


# --- curl ---------------------------------------------------------------------------------------------------------


def test_curl(base_url, ch, ch_database):
    assert curl(f"{base_url}/ping") == "Ok.\n"
    assert curl(f"{base_url}/?query=SELECT+1") == "1\n"
    assert curl("--data-binary", "SELECT 2 + 2", f"{base_url}/") == "4\n"
    ch.command("CREATE TABLE spend (campaign String, cost Decimal(18, 4)) ENGINE = MergeTree ORDER BY campaign")
    insert = urllib.parse.quote(f"INSERT INTO {ch_database}.spend FORMAT CSV")
    assert curl("--data-binary", "alpha,1.5\nbeta,2.25\n", f"{base_url}/?query={insert}") == ""
    assert ch.query("SELECT campaign, cost FROM spend ORDER BY campaign").result_rows == [
        ("alpha", Decimal("1.5")), ("beta", Decimal("2.25"))
    ]
    assert curl("--compressed", f"{base_url}/?query=SELECT+count()+FROM+{ch_database}.spend") == "2\n"


def test_curl_form_with_an_external_table_parameters_and_the_query(base_url, tmp_path):
    data = tmp_path / "spend.tsv"
    data.write_bytes(b"alpha\t1.5\nbeta;--x\t2.25\n")
    query = "SELECT name, cost * {factor:Float64} FROM spend WHERE cost > {floor:Float64} ORDER BY name FORMAT TSV"
    printed = curl("-F", f"spend=@{data};filename=spend.tsv;type=text/tab-separated-values",
                   "-F", "param_factor=2", "-F", "param_floor=1", "-F", f"query={query}",
                   f"{base_url}/?spend_structure=" + urllib.parse.quote("name String, cost Float64"))
    assert printed == "alpha\t3\nbeta;--x\t4.5\n"


# --- HTTP details -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "encoding, compress",
    [("gzip", gzip.compress), ("zstd", zstandard.ZstdCompressor().compress), ("lz4", lz4.frame.compress)],
)
def test_compressed_bodies_both_ways(base_url, ch, ch_database, encoding, compress):
    ch.command("CREATE TABLE packed (a UInt32) ENGINE = MergeTree ORDER BY a")
    data = b"".join(b"%d\n" % i for i in range(1000))
    # Two frames one after the other, as clickhouse-connect sends them.
    body = compress(data[:2000]) + compress(data[2000:])
    insert = {"query": f"INSERT INTO {ch_database}.packed FORMAT TSV"}
    assert http(base_url, insert, body, {"Content-Encoding": encoding})[0] == 200
    status, headers, answer = http(
        base_url, {"query": f"SELECT sum(a) FROM {ch_database}.packed"}, headers={"Accept-Encoding": encoding}
    )
    assert status == 200 and headers["Content-Encoding"] == encoding
    decompress = {"gzip": gzip.decompress, "zstd": zstandard.ZstdDecompressor().decompress, "lz4": lz4.frame.decompress}
    assert decompress[encoding](answer) == b"%d\n" % sum(range(1000))


def test_response_headers(base_url):
    params = {"query": "SELECT 1 AS a FORMAT JSONEachRow", "query_id": "my-query"}
    status, headers, body = http(base_url, params, headers={"X-ClickHouse-Format": "CSV"})
    assert (status, body) == (200, b'{"a":1}\n')
    assert headers["X-ClickHouse-Query-Id"] == "my-query"
    assert headers["X-ClickHouse-Format"] == "JSONEachRow"
    assert headers["X-ClickHouse-Timezone"]
    assert headers["X-ClickHouse-Server-Display-Name"]
    assert '"result_rows":"1"' in headers["X-ClickHouse-Summary"]
    assert http(base_url, {"query": "SELECT 1 AS a", "default_format": "CSVWithNames"})[2] == b'"a"\n1\n'


def test_the_database_parameter_and_header(base_url, ch, ch_database):
    ch.command("CREATE TABLE here (a UInt8) ENGINE = Memory")
    assert http(base_url, {"database": ch_database}, b"EXISTS TABLE here")[2] == b"1\n"
    assert http(base_url, None, b"EXISTS TABLE here", {"X-ClickHouse-Database": ch_database})[2] == b"1\n"
    assert http(base_url, None, b"EXISTS TABLE here")[2] == b"0\n"
    status, headers, _ = http(base_url, {"database": "no_such_database"}, b"SELECT 1")
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (404, "81")


def test_concurrent_requests_get_their_own_answers(clickhouse_local):
    failures = []

    def work(worker: int) -> None:
        client = clickhouse_local.client()
        try:
            for step in range(25):
                expected = worker * 1000 + step
                got = client.query("SELECT {a:UInt32} * 1000 + {b:UInt32}", parameters={"a": worker, "b": step})
                if got.result_rows != [(expected,)]:
                    failures.append((worker, step, got.result_rows))
                status, _, body = http(clickhouse_local.base_url, {"max_threads": str(1 + step % 3)},
                                       f"SELECT {expected}, getSetting('max_threads')".encode())
                if (status, body) != (200, f"{expected}\t{1 + step % 3}\n".encode()):
                    failures.append((worker, step, status, body))
        except Exception as error:  # a thread's exception would otherwise be lost
            failures.append((worker, repr(error)))
        finally:
            client.close()

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


# --- the process --------------------------------------------------------------------------------------------------


def test_data_survives_a_restart(tmp_path):
    path, port = tmp_path / "data", free_port()
    process = start_clickhouse_local(path, port)
    try:
        client = clickhouse_connect.get_client(host="127.0.0.1", port=port)
        client.command("CREATE DATABASE kept")
        client.command("CREATE TABLE kept.rows (id UInt32, note String) ENGINE = MergeTree ORDER BY id")
        client.insert("kept.rows", [[1, "one"], [2, "two"]])
        client.close()
    finally:
        stop_process(process)
    assert process.returncode == 0

    process = start_clickhouse_local(path, port)
    try:
        client = clickhouse_connect.get_client(host="127.0.0.1", port=port)
        assert client.query("SELECT id, note FROM kept.rows ORDER BY id").result_rows == [(1, "one"), (2, "two")]
        client.close()
    finally:
        stop_process(process)


def test_a_second_server_on_the_same_path_exits_with_one_line(clickhouse_local):
    second = subprocess.run(
        [RULESCTL, "clickhouse-local", "--path", str(clickhouse_local.path), "--port", str(free_port())],
        capture_output=True, text=True, timeout=60,
    )
    assert second.returncode != 0
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "already in use by another clickhouse-local" in lines[0]
    assert f"(pid {clickhouse_local.process.pid})" in lines[0]


def test_a_port_in_use_exits_with_one_line(clickhouse_local, tmp_path):
    second = subprocess.run(
        [RULESCTL, "clickhouse-local", "--path", str(tmp_path / "data"), "--port", str(clickhouse_local.port)],
        capture_output=True, text=True, timeout=60,
    )
    assert second.returncode != 0
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{clickhouse_local.port}" in lines[0] and "in use" in lines[0]


def test_a_password_is_required_when_set(tmp_path):
    port = free_port()
    process = start_clickhouse_local(tmp_path / "data", port, "--password", "secret")
    base_url = f"http://127.0.0.1:{port}"
    try:
        for username, password in (("default", ""), ("default", "wrong"), ("someone", "secret")):
            with pytest.raises(DatabaseError) as raised:
                clickhouse_connect.get_client(host="127.0.0.1", port=port, username=username, password=password)
            assert raised.value.code == 516

        status, headers, body = http(base_url, {"query": "SELECT 1"})
        assert (status, headers["X-ClickHouse-Exception-Code"]) == (403, "516")
        assert b"Authentication failed" in body and b"(AUTHENTICATION_FAILED)" in body

        basic = "Basic " + base64.b64encode(b"default:secret").decode()
        assert answer(base_url, {"query": "SELECT 1"}, headers={"Authorization": basic}) == (200, b"1\n")
        keys = {"X-ClickHouse-User": "default", "X-ClickHouse-Key": "secret"}
        assert answer(base_url, {"query": "SELECT 2"}, headers=keys) == (200, b"2\n")
        assert answer(base_url, {"query": "SELECT 3", "user": "default", "password": "secret"}) == (200, b"3\n")
        assert http(base_url, path="/ping")[0] == 200

        client = clickhouse_connect.get_client(host="127.0.0.1", port=port, username="default", password="secret")
        assert client.command("SELECT 40 + 2") == 42
        client.close()
    finally:
        stop_process(process)
