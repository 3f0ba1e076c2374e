FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY engine engine
COPY storage storage
COPY worker worker
COPY clickhouse_local clickhouse_local
COPY benchmarks benchmarks
COPY demo demo
COPY sql sql
RUN pip install --no-cache-dir -e .
ENTRYPOINT []
