"""The embedded ClickHouse server: chDB's engine behind the ClickHouse HTTP interface.

`clickhouse_local.server.serve()` runs the real ClickHouse engine in-process (chDB, data kept in one
directory) and answers the HTTP protocol of a ClickHouse server, so clickhouse-connect with its default
settings and `curl` work against it as against `clickhouse-server`:

- `GET /?query=...`, `POST /` with the statement in the body, or the statement split between the
  `query` parameter and the body (joined by a newline, the body after an `INSERT ... FORMAT X` being
  its data); `multipart/form-data` with `query`, `param_<name>` fields and external tables.
- `GET /ping`, `GET /` and `GET /replicas_status` answer `Ok.`; another path without a statement is 404.
- URL parameters that are not part of the HTTP layer are settings for that request only; `database`
  (or `X-ClickHouse-Database`), `default_format` (or `X-ClickHouse-Format`, TabSeparated otherwise),
  `query_id`, `param_<name>` for `{name:Type}` placeholders, `session_id` with `session_timeout`,
  `session_check` and `close_session`.
- Request bodies in Content-Encoding gzip, deflate, zstd, lz4, xz, bz2 (and br when the `brotli`
  module is installed); answers compressed the same ways when Accept-Encoding asks for it and the
  setting `enable_http_compression` is on (the engine's default).
- Errors as ClickHouse sends them: the `Code: N. DB::Exception: ...` text, the header
  `X-ClickHouse-Exception-Code` and ClickHouse's HTTP status for that code.
- With a password, the user `default` must present it by HTTP basic auth, by the headers
  `X-ClickHouse-User`/`X-ClickHouse-Key` or by the `user`/`password` parameters. Without a password
  any user and password are accepted, which is why the default address is the loopback one.

Where it differs from a ClickHouse server: there are no users, roles or quotas; the whole answer is
computed before it is sent (as with `wait_end_of_query=1`), so there are no progress headers;
the `compress`/`decompress` parameters (ClickHouse's own block compression) are refused; the
engine gives each query its own id, so `query_id` names the request but not the query in
system.processes; and a request that must be read-only (GET, or a `readonly` setting) runs outside
its session, because a chDB connection cannot leave read-only mode once in it.

Each request gets a connection of its own (a session keeps one for its requests), so the
engine runs requests in parallel and a request's settings stay with it.

Modules: `server` (serve(), the HTTP server and its handler), `query_request` (a request's parameters, settings
and credentials), `bodies` (framing, encodings, multipart, content types), `statements` (the lexing that splits an
INSERT from its data), `service` (the engine, its sessions and connections, running a statement) and `errors`
(errors as ClickHouse answers them).
"""
