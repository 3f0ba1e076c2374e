"""Measurements of the service, kept outside it: `rulesctl bench` (bench.py, the SQL path against the interpreter)
and `rulesctl load-bench` (load_bench.py, beat and a worker under load), each on scratch databases it drops.

Their own named queries are in benchmarks/queries and run beside the service's (see storage/queries.py).
"""
