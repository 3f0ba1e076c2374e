"""`rulesctl`: the command line of the rules engine."""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from datetime import UTC, date, datetime
from pathlib import Path

from engine.rule_ids import canonical_rule_id
from engine.timestamps import parse_instant, utc_iso
from storage.errors import StorageError
from worker.errors import CommandFailed, WorkerError
from worker.settings import ConfigurationError


class UsageError(WorkerError):
    """A bad argument: printed as one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would print the whole usage; the README promises one line
        raise UsageError(message)


def _cmd_migrate(args: argparse.Namespace) -> int:
    from storage.migrations import migrate_all
    from worker.settings import settings

    config = settings()
    for line in migrate_all(config.database_url, config.clickhouse_url):
        print(line, flush=True)
    return 0


def _cmd_clickhouse_local(args: argparse.Namespace) -> int:
    from clickhouse_local.server import serve

    serve(args.path, host=args.host, port=args.port, password=args.password)
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    from worker.service import run_service
    from worker.settings import settings

    return run_service(settings(), Path(args.data_dir).resolve(), demo=args.demo)


def _parse_at(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_instant(text)
    except ValueError:
        raise UsageError(f"--at: not an ISO 8601 time: {text!r}") from None


def _parse_rule_id(text: str, option: str = "RULE_ID") -> str:
    try:
        return canonical_rule_id(text)
    except ValueError as error:
        raise UsageError(f"{option}: {error}") from None


def _print_summary(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, sort_keys=True))
        return
    print(f"run {result['run_id']} of rule {result['rule_id']} (organization {result['org_id']}) "
          f"as of {result['scheduled_for']}: {result['status']}"
          + (f" on the {result['path']} path" if result["path"] else "")
          + (" (dry run)" if result["dry_run"] else ""))
    print(f"  entities {result['entities']}, matched {result['matched']}, alerts {result['alerts']}, "
          + (f"silenced {result['silenced']}, acknowledged {result['acknowledged']}, "
             if result["silenced"] or result["acknowledged"] else "")
          + f"notified users {result['notified_users'] or 'none'}, {result['duration_ms']} ms")
    if result["storm"]:
        print("  it would have been a storm (see rule_runs.transitions)" if result["dry_run"]
              else "  a storm: every alert written, one incident notice per recipient")
    lifecycle = result.get("lifecycle")
    if lifecycle:
        print("  lifecycle: " + ", ".join(f"{lifecycle[key]} {key.replace('_', ' ')}" for key in
                                          ("pending", "firing", "recovering", "resolved", "would_alert")
                                          if key in lifecycle))
    if result["error"]:
        print(f"  error: {result['error']}")
    if result.get("waiting_for"):
        print(f"  {'evaluated on stale data' if result['stale'] else 'waiting for'}: {result['waiting_for']}")


def _cmd_run(args: argparse.Namespace) -> int:
    from worker.context import open_runner
    from worker.runner import BadRunRequest, RuleNotFound, RunRequest, RunWaiting

    request = RunRequest(rule_id=_parse_rule_id(args.rule_id), scheduled_for=_parse_at(args.at), dry_run=args.dry_run,
                         trigger="manual", triggered_by=args.user)
    if args.enqueue:
        result = _enqueue_and_wait(request)
        _print_summary(result, args.json)
        return 1 if result["status"] == "failed" else 0
    with open_runner() as runner:
        try:
            result = runner.run(request)
        except (RuleNotFound, BadRunRequest) as error:
            raise UsageError(str(error)) from None
        except RunWaiting as waiting:
            # The run keeps its claim; beat's sweeper sends its next check once it is due.
            result = waiting.summary
    _print_summary(result, args.json)
    return 1 if result["status"] == "failed" else 0


def _cmd_runs(args: argparse.Namespace) -> int:
    from worker.context import open_postgres
    from worker.runner import summary

    rule_id = _parse_rule_id(args.rule, "--rule") if args.rule else None
    with open_postgres() as postgres:
        rows = postgres.all("recent_runs", rule_id=rule_id, limit=args.limit)
    summaries = [summary(row) for row in rows]
    if args.json:
        for result in summaries:
            print(json.dumps(result, sort_keys=True))
        return 0
    print(f"{'rule':<36}  {'trigger':<8}  {'scheduled for':<20}  {'status':<9}  {'entities':>8}  {'matched':>7}  "
          f"{'alerts':>6}  {'duration':>8}  error")
    for r in summaries:
        duration = f"{r['duration_ms']} ms" if r["duration_ms"] is not None else "-"
        print(f"{r['rule_id']:<36}  {r['trigger']:<8}  {r['scheduled_for']:<20}  {r['status']:<9}  {r['entities']:>8}  "
              f"{r['matched']:>7}  {r['alerts']:>6}  {duration:>8}  {(r['error'] or '')[:80]}")
    return 0


def _cmd_freshness(args: argparse.Namespace) -> int:
    from engine.freshness import freshness_report
    from storage.freshness import freshness_signals
    from worker.context import open_postgres

    now = datetime.now(UTC)
    with open_postgres() as postgres:
        signals = freshness_signals(postgres, args.org)
    entries = [entry for org_id, found in signals.items()
               for entry in freshness_report(org_id, found.accounts, found.pipelines, now)]
    if args.json:
        for entry in entries:
            print(json.dumps(entry, sort_keys=True))
        return 0
    if not entries:
        print("no DSP accounts or pipelines" + (f" in organization {args.org}" if args.org is not None else ""))
        return 0
    print(f"{'org':>5}  {'source':<10}  {'account':<32}  {'status':<8}  {'last sync':<20}  {'behind':<12}  pipelines")
    for entry in entries:
        account = entry["account"]
        label = "-" if account is None else (
            account["external_id"] + (f" ({account['name']})" if account["name"] else ""))
        pipelines = ", ".join(f"{p['name']}: {p['status']}" for p in entry["pipelines"]) or "-"
        print(f"{entry['org_id']:>5}  {entry['source']:<10}  {label[:32]:<32}  "
              f"{account['status'] if account else '-':<8}  {entry['last_sync_at'] or 'never':<20}  "
              f"{entry['behind']:<12}  {pipelines}")
    return 0


def _enqueue_and_wait(request) -> dict:
    from celery.exceptions import TimeoutError as ResultTimeout

    from worker.app import VISIBILITY_TIMEOUT_SECONDS
    from worker.tasks import evaluate

    scheduled_for = utc_iso(request.scheduled_for) if request.scheduled_for else None
    try:
        pending = evaluate.apply_async(args=(request.rule_id,), kwargs={
            "scheduled_for": scheduled_for, "dry_run": request.dry_run, "triggered_by": request.triggered_by,
            "trigger": request.trigger})
        result = pending.get(timeout=VISIBILITY_TIMEOUT_SECONDS)
    except ResultTimeout:
        raise CommandFailed("no worker finished the run in time: is `celery -A worker.app worker` running?") from None
    except OSError as error:
        raise CommandFailed(f"Redis at the REDIS_URL: {error}") from None
    if result is None:
        raise UsageError(f"no rule with id {request.rule_id}")
    if "run_id" not in result:
        raise UsageError(result["error"])
    return result


def _cmd_dispatch(args: argparse.Namespace) -> int:
    from worker.dispatch import dispatch_due

    sent = dispatch_due(_parse_at(args.at) or datetime.now(UTC))
    if args.json:
        for item in sent:
            print(json.dumps(item, sort_keys=True))
    else:
        for item in sent:
            print(f"enqueued rule {item['rule_id']} for {item['scheduled_for']} ({item['task']} {item['task_id']})")
        print(f"{len(sent)} rules due, in {len({item['task_id'] for item in sent})} tasks")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from engine.model import validate_document
    from worker.settings import settings

    return _validate_file(args.file, "rule document",
                          lambda document: validate_document(document, allowed_hosts=settings().notify_allowed_hosts))


def _cmd_validate_convention(args: argparse.Namespace) -> int:
    from engine.conventions import convention_problems

    return _validate_file(args.file, "naming convention", convention_problems)


def _validate_file(file: str, kind: str, problems_of: Callable[[Any], list]) -> int:
    """Prints every problem of the JSON document in `file` (- : standard input), or that it is valid; 1 or 0."""
    source = "standard input" if file == "-" else file
    try:
        text = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except OSError as error:
        raise UsageError(f"cannot read {source}: {error.strerror}") from None
    try:
        document = json.loads(text.decode("utf-8"))
    except UnicodeDecodeError as error:
        print(f"{source}: not UTF-8 text (byte {error.start})")
        return 1
    except ValueError as error:
        print(f"{source}: not JSON: {error}")
        return 1
    except RecursionError:
        print(f"{source}: not a {kind}: nested too deeply")
        return 1
    problems = problems_of(document)
    for problem in problems:
        print(problem)
    if not problems:
        print(f"{source}: valid")
    return 1 if problems else 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from engine.conventions import convention_json_schema
    from engine.model import rule_json_schema

    print(json.dumps(convention_json_schema() if args.convention else rule_json_schema(), indent=2))
    return 0


def _parse_day(option: str, text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{option}: not a date (YYYY-MM-DD): {text!r}") from None


def _cmd_backfill(args: argparse.Namespace) -> int:
    from engine.errors import RuleValidationError
    from engine.model import parse_rule
    from storage.rule_rows import rule_with_organization
    from worker.backfill import backfill, format_days
    from worker.context import open_postgres, open_runner

    rule_id = _parse_rule_id(args.rule_id)
    first_day, last_day = _parse_day("--from", args.first_day), _parse_day("--to", args.last_day)
    if last_day < first_day:
        raise UsageError("--to: must not be before --from")
    with open_postgres() as postgres:
        row = rule_with_organization(postgres, rule_id)
    if row is None:
        raise UsageError(f"no rule with id {rule_id}")
    try:
        rule = parse_rule(row.conditions, row.actions, timezone=row.timezone, conventions=row.naming_conventions)
    except RuleValidationError as error:
        raise CommandFailed(f"rule {rule_id} is not valid: {error}") from None
    with open_runner() as runner:
        result = backfill(runner, rule_id, rule, row.timezone, first_day, last_day, write=args.write)
    if args.json:
        for summary in result.summaries:
            print(json.dumps(summary, sort_keys=True))
    else:
        print(format_days(result, row.timezone))
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _cmd_bench(args: argparse.Namespace) -> int:
    from benchmarks.bench import run_bench
    from worker.settings import settings

    _print_figures(run_bench(settings(), args.entities, args.days, args.rules), args.json)
    return 0


def _print_figures(figures: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:<28} {value}")


def _cmd_load_bench(args: argparse.Namespace) -> int:
    from benchmarks.load_bench import run_load_bench
    from worker.settings import settings

    if args.orgs > args.rules:
        raise UsageError("--orgs: must not be more than --rules")
    _print_figures(run_load_bench(settings(), rules=args.rules, orgs=args.orgs, campaigns=args.campaigns,
                                  minutes=args.minutes, redis_db=args.redis_db), args.json)
    return 0


def _cmd_demo_data(args: argparse.Namespace) -> int:
    from demo.data import load_demo_data
    from worker.settings import settings

    print(load_demo_data(settings()))
    return 0


def _cmd_demo_inbox(args: argparse.Namespace) -> int:
    from demo.inbox import INBOX_DIR_NAME, Inbox, InboxError, describe

    directory = Path(args.data_dir) / INBOX_DIR_NAME
    try:
        summaries = Inbox(directory).summaries()
    except InboxError as error:
        raise CommandFailed(str(error)) from None
    if not summaries:
        print(f"nothing received yet in {directory}: start the demo with `./rulesctl up --demo`, and its rules "
              "send e-mail, Slack and webhook posts here within a minute", file=sys.stderr if args.json else sys.stdout)
        return 0
    for summary in summaries:
        print(json.dumps(summary, sort_keys=True) if args.json else describe(summary))
    return 0


@contextmanager
def _silencing_errors() -> Iterator[None]:
    """A bad silence or acknowledgement request is bad usage (exit 2); a refusal is a failure (exit 1)."""
    from worker.silencing import BadSilenceRequest, SilenceRefused

    try:
        yield
    except BadSilenceRequest as error:
        raise UsageError(str(error)) from None
    except SilenceRefused as error:
        raise CommandFailed(str(error)) from None


def _print_silences(silences: list, as_json: bool) -> None:
    from worker.silencing import describe_scope, now_utc

    now = now_utc()
    for silence in silences:
        if as_json:
            print(json.dumps(silence.to_dict(now), sort_keys=True))
            continue
        print(f"silence {silence.id} ({silence.state(now)}): {describe_scope(silence.scope)}, "
              f"from {utc_iso(silence.starts_at)} until {utc_iso(silence.ends_at)}, by user {silence.created_by}"
              + (f": {silence.comment}" if silence.comment else ""))


def _cmd_silence_add(args: argparse.Namespace) -> int:
    from engine.silences import SilenceScope
    from worker.context import open_postgres
    from worker.silencing import SilenceRequest, add_silence, parse_length, parse_time

    if (args.entity_type is None) != (args.entity_id is None):
        raise UsageError("--entity-type and --entity-id go together: give both (one entity) or neither")
    with _silencing_errors():
        scope = SilenceScope(_parse_rule_id(args.rule, "--rule") if args.rule else None, args.entity_type,
                             args.entity_id, args.dsp_type, args.advertiser_id)
        request = SilenceRequest(
            args.org, args.by, scope, ends_at=parse_time(args.ends, "--ends") if args.ends else None,
            duration=parse_length(args.duration, "--for") if args.duration else None,
            starts_at=parse_time(args.starts, "--starts") if args.starts else None, comment=args.comment)
        with open_postgres() as postgres:
            silence = add_silence(postgres, request)
    _print_silences([silence], args.json)
    return 0


def _cmd_silence_list(args: argparse.Namespace) -> int:
    from worker.context import open_postgres
    from worker.silencing import list_silences

    with _silencing_errors(), open_postgres() as postgres:
        silences = list_silences(postgres, args.org, include_ended=args.all)
    if not silences and not args.json:
        print(f"no silences{'' if args.all else ' active or scheduled'} in organization {args.org}")
    _print_silences(silences, args.json)
    return 0


def _cmd_silence_expire(args: argparse.Namespace) -> int:
    from worker.context import open_postgres
    from worker.silencing import expire_silence

    with _silencing_errors(), open_postgres() as postgres:
        silence = expire_silence(postgres, args.silence_id, args.by)
    _print_silences([silence], args.json)
    return 0


def _cmd_ack(args: argparse.Namespace) -> int:
    from storage.results import ResultStore
    from worker.context import open_stores
    from worker.silencing import acknowledge

    rule_id = _parse_rule_id(args.rule_id)
    with _silencing_errors(), open_stores() as (postgres, clickhouse):
        acknowledgement = acknowledge(postgres, ResultStore(clickhouse), rule_id, args.entity_type, args.entity_id,
                                      args.by, args.comment)
    if args.json:
        print(json.dumps(acknowledgement.to_dict(), sort_keys=True))
    else:
        print(f"acknowledgement {acknowledgement.id}: {args.entity_type} {args.entity_id} of rule {rule_id}, by user "
              f"{args.by}; not notified again until it resolves")
    return 0


def _build_parser() -> _Parser:
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks on failure")
    parser = _Parser(prog="rulesctl", description="The rules engine for ad-operations data.", parents=[common])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    add_command = functools.partial(commands.add_parser, parents=[common])

    migrate = add_command("migrate", help="create the databases if missing and apply pending migrations")
    migrate.set_defaults(handler=_cmd_migrate)

    local = add_command("clickhouse-local", help="serve the embedded ClickHouse (chDB) over HTTP")
    local.add_argument("--path", default="./data/clickhouse", help="data directory (default ./data/clickhouse)")
    local.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    local.add_argument("--port", type=int, default=8123, help="port to listen on (default 8123)")
    local.add_argument("--password", default=None, help="require this password for every request")
    local.set_defaults(handler=_cmd_clickhouse_local)

    run = add_command("run", help="evaluate one rule now, or as of --at, and print the run summary")
    run.add_argument("rule_id", metavar="RULE_ID", help="the rule's id (a UUID)")
    run.add_argument("--at", help="evaluate as of this ISO 8601 time (default now; without an offset, UTC)")
    run.add_argument("--dry-run", action="store_true", help="evaluate but write and notify nothing")
    run.add_argument("--user", type=int, help="the id of the user asking (the run is audited)")
    run.add_argument("--enqueue", action="store_true", help="run it on a Celery worker and wait for the summary")
    run.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    run.set_defaults(handler=_cmd_run)

    dispatch = add_command("dispatch", help="enqueue every enabled rule due at that instant, as beat does")
    dispatch.add_argument("--at", help="the instant (ISO 8601; default now; without an offset, UTC)")
    dispatch.add_argument("--json", action="store_true", help="one JSON object per rule enqueued, with its task")
    dispatch.set_defaults(handler=_cmd_dispatch)

    runs = add_command("runs", help="the latest runs, newest first")
    runs.add_argument("--rule", metavar="RULE_ID", help="only this rule's runs")
    runs.add_argument("--limit", type=_positive, default=20, help="how many (default 20)")
    runs.add_argument("--json", action="store_true", help="one run summary per line")
    runs.set_defaults(handler=_cmd_runs)

    freshness = add_command("freshness", help="each DSP account and pipeline: its last sync and how far behind it is")
    freshness.add_argument("--org", type=int, metavar="ID", help="only this organization")
    freshness.add_argument("--json", action="store_true", help="one JSON object per account (or pipeline type)")
    freshness.set_defaults(handler=_cmd_freshness)

    validate = add_command("validate", help="check a rule document {\"conditions\": ..., \"actions\": ...}")
    validate.add_argument("file", nargs="?", default="-", metavar="FILE", help="the document (default - : standard input)")
    validate.set_defaults(handler=_cmd_validate)

    validate_convention = add_command("validate-convention", help="check a naming convention document")
    validate_convention.add_argument("file", nargs="?", default="-", metavar="FILE",
                                     help="the document (default - : standard input)")
    validate_convention.set_defaults(handler=_cmd_validate_convention)

    schema = add_command("schema", help="print the JSON Schema of rule documents (or of naming conventions)")
    schema.add_argument("--convention", action="store_true", help="the schema of a naming convention document")
    schema.set_defaults(handler=_cmd_schema)

    replay = add_command("backfill", help="replay a rule at each fire time of its schedule in a date range")
    replay.add_argument("rule_id", metavar="RULE_ID", help="the rule's id (a UUID)")
    replay.add_argument("--from", dest="first_day", required=True, metavar="DATE", help="first local date (YYYY-MM-DD)")
    replay.add_argument("--to", dest="last_day", required=True, metavar="DATE", help="last local date, included")
    replay.add_argument("--write", action="store_true", help="write rule_evaluations and alert_events (never notifies)")
    replay.add_argument("--json", action="store_true", help="print every fire time's run summary, one per line")
    replay.set_defaults(handler=_cmd_backfill)

    bench = add_command("bench", help="measure a batch, separate runs and the interpreter on synthetic metrics")
    bench.add_argument("--entities", type=_positive, default=100_000, help="campaigns (default 100000)")
    bench.add_argument("--days", type=_positive, default=30, help="days of metrics (default 30)")
    bench.add_argument("--rules", type=_positive, default=10, help="rules (default 10)")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.set_defaults(handler=_cmd_bench)
    load = add_command("load-bench", help="run beat and one worker over many rules due every minute; report throughput and lag")
    load.add_argument("--rules", type=_positive, default=1000, help="enabled rules, all due every minute (default 1000)")
    load.add_argument("--orgs", type=_positive, default=20, help="organizations sharing the rules (default 20)")
    load.add_argument("--campaigns", type=_positive, default=10_000, help="campaigns over all organizations (default 10000)")
    load.add_argument("--minutes", type=_positive, default=3, help="fire times to measure (default 3)")
    load.add_argument("--redis-db", type=int, choices=range(16), default=15, metavar="N",
                      help="the Redis database number of REDIS_URL's server to use, flushed before and after (default 15)")
    load.add_argument("--json", action="store_true", help="print one JSON object")
    load.set_defaults(handler=_cmd_load_bench)

    silence = add_command("silence", help="withhold the notices of some rules, entities or accounts for a while")
    silence_actions = silence.add_subparsers(dest="silence_action", required=True, parser_class=_Parser,
                                             metavar="ACTION")
    silence_add = silence_actions.add_parser("add", parents=[common], help="create a silence")
    silence_add.add_argument("--org", type=int, required=True, help="the organization's id")
    silence_add.add_argument("--by", type=int, required=True, metavar="USER_ID", help="the user creating it")
    silence_add.add_argument("--rule", metavar="RULE_ID", help="only this rule's notices (default: every rule)")
    silence_add.add_argument("--entity-type", help="with --entity-id: only this entity (campaign, io, line_item …)")
    silence_add.add_argument("--entity-id", help="with --entity-type: only this entity")
    silence_add.add_argument("--dsp-type", help="only entities of this DSP (DV360, TTD …)")
    silence_add.add_argument("--advertiser-id", help="only entities of this advertiser")
    silence_add.add_argument("--starts", metavar="ISO", help="when it starts (ISO 8601; default now; no offset: UTC)")
    silence_end = silence_add.add_mutually_exclusive_group(required=True)
    silence_end.add_argument("--ends", metavar="ISO", help="when it ends (ISO 8601; no offset: UTC)")
    silence_end.add_argument("--for", dest="duration", metavar="DURATION", help="how long: 30m, 2h, 1d, 1w")
    silence_add.add_argument("--comment", help="why (kept with the silence and in the audit log)")
    silence_add.add_argument("--json", action="store_true", help="print the silence as one JSON object")
    silence_add.set_defaults(handler=_cmd_silence_add)
    silence_list = silence_actions.add_parser("list", parents=[common], help="the organization's silences")
    silence_list.add_argument("--org", type=int, required=True, help="the organization's id")
    silence_list.add_argument("--all", action="store_true", help="ended ones too (default: active and scheduled)")
    silence_list.add_argument("--json", action="store_true", help="one JSON object per silence")
    silence_list.set_defaults(handler=_cmd_silence_list)
    silence_expire = silence_actions.add_parser("expire", parents=[common], help="end a silence now")
    silence_expire.add_argument("silence_id", type=int, metavar="ID", help="the silence's id")
    silence_expire.add_argument("--by", type=int, required=True, metavar="USER_ID", help="the user ending it")
    silence_expire.add_argument("--json", action="store_true", help="print the silence as one JSON object")
    silence_expire.set_defaults(handler=_cmd_silence_expire)

    ack = add_command("ack", help="acknowledge a firing (rule, entity): no more notices of it until it resolves")
    ack.add_argument("rule_id", metavar="RULE_ID", help="the rule's id (a UUID)")
    ack.add_argument("entity_type", metavar="ENTITY_TYPE", help="campaign, io, line_item …")
    ack.add_argument("entity_id", metavar="ENTITY_ID", help="the entity's id")
    ack.add_argument("--by", type=int, required=True, metavar="USER_ID", help="the user acknowledging it")
    ack.add_argument("--comment", help="why (kept with the acknowledgement and in the audit log)")
    ack.add_argument("--json", action="store_true", help="print the acknowledgement as one JSON object")
    ack.set_defaults(handler=_cmd_ack)

    demo = add_command("demo-data", help="load the demo organization, users, grants, rules and 60 days of data")
    demo.set_defaults(handler=_cmd_demo_data)

    demo_inbox = add_command("demo-inbox", help="what the demo's local mail sink and webhook receiver received")
    demo_inbox.add_argument("--data-dir", default="./data", help="the data directory of `up --demo` (default ./data)")
    demo_inbox.add_argument("--json", action="store_true", help="one JSON object per message or post")
    demo_inbox.set_defaults(handler=_cmd_demo_inbox)

    up = add_command("up", help="run the whole service in the foreground (Ctrl-C stops it)")
    up.add_argument("--demo", action="store_true",
                    help="load the demo data set first and run a local inbox for its notifications")
    up.add_argument("--data-dir", default="./data",
                    help="where the embedded ClickHouse and the demo inbox keep their data (default ./data)")
    up.set_defaults(handler=_cmd_up)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one rulesctl command; returns its exit code (0 ok, 1 failed, 2 bad usage, 130 interrupted, 141 its
    output's reader had gone)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = _build_parser().parse_args(argv)
        handler: Callable[[argparse.Namespace], int] = args.handler
        code = handler(args)
        sys.stdout.flush()
        return code
    except UsageError as error:
        print(f"rulesctl: {error}", file=sys.stderr)
        return 2
    except (CommandFailed, ConfigurationError, StorageError) as error:
        if debug:
            raise
        print(f"rulesctl: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader (`| head`) has gone: the rest of the output is dropped, and so is Python's flush of it at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
