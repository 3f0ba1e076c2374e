"""`rulesctl demo-data`: a demo organization whose data makes some rules match now.

The organization (slug `demo`) works in America/New_York and has every module. Its users cover every role and
every kind of grant; 36 campaigns on three DSP accounts have 60 days of metrics up to today, 12 insertion orders
have pacing snapshots every six hours, and four rules watch them: overspend, a collapsing CTR, under-pacing and
the naming convention (`campaign`, in the organization's settings), which nine campaigns break, each in its own
way. One overspending campaign is silenced for the overspend rule. The numbers come from a fixed seed, so two
loads on the same day are identical.

The three accounts synced when the demo was loaded; a fourth, the search account, synced a day before, so the
fifth rule, scoped to it, waits for its data (README "Data freshness"). The campaign rules are scoped to the three
synced DSP types; the pacing rule covers every account, so it does not wait (max_wait 0) and runs on stale data.

Its statements are in demo/queries (postgres.sql, clickhouse.sql), beside the service's own (storage/queries).

A second load finds the organization and leaves PostgreSQL as it is; if ClickHouse has no metrics of it (a new
`./data` beside a database that kept the demo), it loads them again, up to today, and marks the accounts synced
now (the lagging one a day before), so that the rules match as on a first load.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from engine.silences import SilenceScope
from engine.timestamps import utc_iso
from storage.clickhouse import ClickHouse
from storage.postgres import Postgres, Transaction
from storage.silences import SilenceStore
from worker.settings import Settings

QUERIES = Path(__file__).with_name("queries")

DEMO_SLUG = "demo"
DEMO_TIMEZONE = "America/New_York"
DAYS = 60
CENT = Decimal("0.0001")

ACCOUNTS = (("DV360", "adv-100", "Northwind DV360"), ("TTD", "adv-200", "Northwind TTD"), ("META", "adv-300", "Northwind Meta"))
# A day behind the others, and without campaigns yet.
LAGGING_ACCOUNT = ("GOOGLE_ADS", "adv-400", "Northwind Search")
LAG = timedelta(days=1)
SYNCED_TYPES = {"dsp_type": [dsp for dsp, _, _ in ACCOUNTS]}
TACTICS = ("Prospecting", "Retargeting", "Brand", "Video")
MARKETS = ("US", "CA", "GB")
USERS = (
    # email, full name, role, verified
    ("owner@demo.example", "Olivia Owner", "owner", True),
    ("admin@demo.example", "Adam Admin", "admin", True),
    ("buyer@demo.example", "Mia Buyer", "member", True),
    ("trader@demo.example", "Theo Trader", "member", True),
    ("viewer@demo.example", "Vera Viewer", "viewer", True),
    ("former@demo.example", "Frank Former", "member", True),
    ("unverified@demo.example", "Uma Unverified", "member", False),
)
# NWM_<dsp>_Q<n>_<tactic>_<market>, with an optional flight month: NWM_DV360_Q1_Brand_US_202611.
NAMING_CONVENTION = {"delimiter": "_", "tokens": [
    {"name": "brand", "values": ["NWM"]},
    {"name": "dsp", "equals": "dsp_type"},
    {"name": "quarter", "pattern": "^Q[1-4]$"},
    {"name": "tactic", "values": list(TACTICS)},
    {"name": "market", "values": list(MARKETS)},
    {"name": "flight", "date": "YYYYMM", "optional": True},
]}
# Campaign index (12 per account, in account order) -> a name breaking the convention, and how.
BROKEN_NAMES = {
    2: "summer sale test",                    # too few tokens
    9: "NWM-TTD-Q4-Retargeting",              # the wrong delimiter: too few tokens
    14: "nwm_TTD_Q1_Brand_US",                # wrong case (suggests NWM)
    22: "NWM_TTD_Q5_Video_US",                # the quarter does not match its pattern
    31: "Copy of NWM_META_Q2_Brand_CA",       # not an allowed value, nothing close enough to suggest
    5: "NWM_DV360_Q2_Retargetting_GB",        # not an allowed value (suggests Retargeting)
    18: "NWM_DV360_Q3_Video_US",              # a TTD campaign named for DV360: the cross-field check
    26: "NWM_META_Q3_Brand_GB_202613",        # no month 13: a bad date
    34: "NWM_META_Q3_Brand_CA_202611_copy",   # too many tokens
}

# Campaign 7 overspends; the owner silenced it for "Overspend yesterday" (the first rule).
SILENCED = 7
SILENCE_LENGTH = timedelta(days=30)
SILENCE_COMMENT = "Planned holiday burst, approved by the client"


def demo_rules() -> list[dict]:
    """The demo's rules: name, module, conditions and actions."""
    notify = {"channels": ["in_app", "email"], "roles": ["owner", "admin", "member"]}
    return [
        # Every channel. example.com is reserved for examples, so its posts fail and show retries in `deliveries`;
        # `rulesctl up --demo` points them at the local inbox instead (point_demo_channels).
        {"name": "Overspend yesterday", "module": "alerts",
         "conditions": {"window": "yesterday", "schedule": "* * * * *", "scope": SYNCED_TYPES,
                        "logic": {">": [{"var": "spend"}, 1000]}},
         "actions": {"severity": "critical", "cooldown_minutes": 60, "notify_on_resolve": True,
                     "notify": {**notify, "channels": ["in_app", "email", "slack", "webhook"],
                                "slack_webhook_url": "https://example.com/demo/slack",
                                "webhook_url": "https://example.com/demo/webhook"}}},
        {"name": "CTR collapsed week over week", "module": "alerts",
         "conditions": {"window": "last_7_days", "compare_to": "previous_period", "schedule": "*/5 * * * *",
                        "scope": SYNCED_TYPES,
                        "logic": {"and": [{">": [{"var": "impressions"}, 50000]},
                                          {"<": [{"var": "ctr"}, {"*": [{"var": "prev.ctr"}, 0.5]}]}]}},
         "actions": {"severity": "warning", "cooldown_minutes": 240, "pending_runs": 2, "notify": notify}},
        {"name": "Insertion orders under-pacing", "module": "qa",
         "conditions": {"source": "pacing_snapshots", "window": "today", "schedule": "* * * * *",
                        "scope": {"entity_type": ["io"]}, "max_wait": "0",
                        "logic": {"<": [{"var": "pacing_rate"}, 0.8]}},
         "actions": {"severity": "warning", "cooldown_minutes": 120, "notify": notify}},
        {"name": "Campaign names break the convention", "module": "taxonomy",
         "conditions": {"window": "yesterday", "schedule": "*/5 * * * *", "scope": SYNCED_TYPES,
                        "logic": {"naming": [{"var": "campaign_name"}, "campaign"]}},
         "actions": {"severity": "info", "cooldown_minutes": 1440, "notify": {"roles": ["owner", "admin"]}}},
        {"name": "Search overspend yesterday", "module": "alerts",
         "conditions": {"window": "yesterday", "schedule": "*/5 * * * *", "scope": {"dsp_type": [LAGGING_ACCOUNT[0]]},
                        "data_delay": "1h", "max_wait": "6h", "on_stale": "run",
                        "logic": {">": [{"var": "spend"}, 1000]}},
         "actions": {"severity": "warning", "cooldown_minutes": 60, "notify": notify}},
    ]


def demo_campaigns() -> list[dict]:
    """36 campaigns: 12 per DSP account; nine break the naming convention (BROKEN_NAMES), some overspend or lose
    their CTR."""
    campaigns = []
    for account_index, (dsp, advertiser, _name) in enumerate(ACCOUNTS):
        for number in range(12):
            tactic, market = TACTICS[number % 4], MARKETS[number % 3]
            campaign_id = f"{dsp.lower()}-{1000 + account_index * 100 + number}"
            name = f"NWM_{dsp}_Q{number % 4 + 1}_{tactic}_{market}"
            campaigns.append({"campaign_id": campaign_id, "name": name, "dsp_type": dsp, "advertiser_id": advertiser,
                              "overspends": number in (0, 7), "ctr_collapses": number == 3})
    for index, broken in BROKEN_NAMES.items():
        campaigns[index]["name"] = broken
    return campaigns


def campaign_metric_rows(org_id: int, today: date, campaigns: list[dict], rng: random.Random) -> list[list]:
    """Daily metrics of every campaign for the 60 days up to today (today's day partly delivered)."""
    rows = []
    for campaign in campaigns:
        base_impressions = rng.randint(20_000, 120_000)
        base_ctr = rng.uniform(0.002, 0.008)
        base_cpm = Decimal(str(round(rng.uniform(2.0, 9.0), 2)))
        for age in range(DAYS - 1, -1, -1):
            day = today - timedelta(days=age)
            impressions = int(base_impressions * rng.uniform(0.85, 1.15) * (0.4 if age == 0 else 1))
            cpm = base_cpm
            if campaign["overspends"] and age <= 1:
                impressions, cpm = max(impressions * 4, 250_000), base_cpm * 4
            ctr = base_ctr * (0.25 if campaign["ctr_collapses"] and 1 <= age <= 7 else 1)
            clicks = int(impressions * ctr * rng.uniform(0.9, 1.1))
            conversions = int(clicks * rng.uniform(0.01, 0.05))
            spend = (Decimal(impressions) * cpm / 1000).quantize(CENT)
            rows.append([
                org_id, day, campaign["dsp_type"], campaign["campaign_id"], campaign["name"], campaign["advertiser_id"],
                impressions, clicks, conversions, spend,
                (spend * 1000 / impressions).quantize(CENT) if impressions else Decimal(0),
                (Decimal(clicks) / impressions).quantize(Decimal("0.000001")) if impressions else Decimal(0),
                (Decimal(conversions) / clicks).quantize(Decimal("0.000001")) if clicks else Decimal(0),
            ])
    return rows


def pacing_rows(org_id: int, now: datetime, rng: random.Random) -> list[list]:
    """Snapshots every six hours for 12 insertion orders over 60 days; IO-1003, IO-1007 and IO-1011 under-pace."""
    rows = []
    first = (now - timedelta(days=DAYS)).replace(minute=0, second=0, microsecond=0)
    for number in range(12):
        entity_id = f"IO-{1000 + number}"
        booked = Decimal(rng.randint(20, 200) * 1000)
        under = number % 4 == 3
        moment = first
        while moment <= now:
            elapsed = (moment - first).days
            rate = Decimal(str(round(rng.uniform(0.55, 0.7) if under else rng.uniform(0.92, 1.08), 4)))
            delivered = (booked * Decimal(elapsed) / (DAYS + 30) * rate).quantize(CENT)
            rows.append([org_id, moment.replace(tzinfo=None), "io", entity_id, booked, delivered, rate, elapsed,
                         DAYS + 30 - elapsed, (delivered / max(elapsed, 1) * (DAYS + 30)).quantize(CENT),
                         Decimal(str(round(rng.uniform(12, 30), 4)))])
            moment += timedelta(hours=6)
    return rows


def _add_people(tx: Transaction, org_id: int, campaigns: list[dict], account_ids: dict[str, int],
                now: datetime) -> dict[str, int]:
    users = {}
    for email, full_name, role, verified in USERS:
        user_id = tx.one("insert_user", email=email, password_hash="!demo-account-no-login", full_name=full_name,
                         email_verified=verified)["id"]
        users[email] = user_id
        tx.execute("insert_membership", user_id=user_id, org_id=org_id, role=role,
                   invited_by=users.get("owner@demo.example"))
    owner = users["owner@demo.example"]
    grants = [
        ("buyer@demo.example", "campaign", campaigns[0]["campaign_id"], None),
        ("buyer@demo.example", "campaign", campaigns[7]["campaign_id"], None),
        ("trader@demo.example", "dsp_account", str(account_ids["TTD"]), None),
        ("viewer@demo.example", "campaign", campaigns[0]["campaign_id"], None),
        ("former@demo.example", "campaign", campaigns[0]["campaign_id"], now - timedelta(days=3)),
        ("unverified@demo.example", "campaign", campaigns[0]["campaign_id"], None),
    ]
    for email, entity_type, entity_id, expires in grants:
        tx.execute("insert_grant", user_id=users[email], org_id=org_id, entity_type=entity_type, entity_id=entity_id,
                   permission="view", granted_by=owner, expires_at=expires.replace(tzinfo=None) if expires else None)
    return users


@contextmanager
def _demo_postgres(config: Settings) -> Iterator[Postgres]:
    postgres = Postgres(config.database_url, max_size=1, extra_queries=QUERIES / "postgres.sql")
    try:
        yield postgres
    finally:
        postgres.close()


def load_demo_data(config: Settings, now: datetime | None = None) -> str:
    """Loads the demo data set into the configured databases unless it is there already (its metrics again when
    only they are missing); returns one line saying what happened."""
    clickhouse = ClickHouse(config.clickhouse_url, extra_queries=QUERIES / "clickhouse.sql")
    try:
        with _demo_postgres(config) as postgres:
            return _load(postgres, clickhouse, (now or datetime.now(UTC)).replace(microsecond=0))
    finally:
        clickhouse.close()


def point_demo_channels(config: Settings, slack_url: str, webhook_url: str) -> str:
    """Makes the demo rules that post to Slack and a webhook post to these URLs; returns one line saying so."""
    with _demo_postgres(config) as postgres, postgres.transaction() as tx:
        changed = tx.all("point_demo_channels", slug=DEMO_SLUG, slack_url=slack_url, webhook_url=webhook_url)
    names = ", ".join(repr(row["name"]) for row in changed)
    return (f"the demo rules post to Slack at {slack_url} and to the webhook at {webhook_url}"
            + (f" (changed: {names})" if names else ""))


def _load(postgres: Postgres, clickhouse: ClickHouse, now: datetime) -> str:
    existing = postgres.one("organization_by_slug", slug=DEMO_SLUG)
    if existing:
        org_id = existing["id"]
        if clickhouse.rows("demo_metric_rows", org_id=org_id)[0]["n"]:
            return f"demo data already loaded: organization {existing['name']!r} (id {org_id})"
        with postgres.transaction() as tx:
            _mark_synced(tx, org_id, now)
            metrics, pacing = _load_metrics(clickhouse, org_id, now)
        return (f"demo organization {existing['name']!r} (id {org_id}) found without metrics: loaded {metrics} "
                f"metric rows and {pacing} pacing snapshots up to now, its accounts synced now")
    campaigns = demo_campaigns()
    with postgres.transaction() as tx:
        org_id = tx.one("insert_organization", name="Northwind Media (demo)", slug=DEMO_SLUG, timezone=DEMO_TIMEZONE,
                        currency="USD", enabled_modules=json.dumps(["alerts", "qa", "taxonomy"]))["id"]
        tx.execute("set_organization_settings", org_id=org_id,
                   settings=json.dumps({"naming_conventions": {"campaign": NAMING_CONVENTION}}))
        synced = now.replace(tzinfo=None)
        account_ids = {dsp: tx.one("insert_dsp_account", org_id=org_id, dsp_type=dsp, external_id=advertiser,
                                   name=name, last_sync_at=synced)["id"] for dsp, advertiser, name in ACCOUNTS}
        lagging_type, lagging_id, lagging_name = LAGGING_ACCOUNT
        tx.one("insert_dsp_account", org_id=org_id, dsp_type=lagging_type, external_id=lagging_id,
               name=lagging_name, last_sync_at=synced)
        _mark_synced(tx, org_id, now)
        users = _add_people(tx, org_id, campaigns, account_ids, now)
        rule_ids = [tx.one("insert_rule", org_id=org_id, name=rule["name"], module=rule["module"],
                           conditions=json.dumps(rule["conditions"]), actions=json.dumps(rule["actions"]),
                           created_by=users["owner@demo.example"])["id"] for rule in demo_rules()]
        # The owner silenced one overspending campaign: its alerts are recorded, its notices withheld.
        SilenceStore(postgres).insert_silence(
            tx, org_id, SilenceScope(rule_ids[0], "campaign", campaigns[SILENCED]["campaign_id"]), now,
            now + SILENCE_LENGTH, users["owner@demo.example"], SILENCE_COMMENT, None)
        metrics, pacing = _load_metrics(clickhouse, org_id, now)
    return (f"demo data loaded: organization {org_id} ({DEMO_TIMEZONE}), {len(users)} users, {len(campaigns)} campaigns, "
            f"{metrics} metric rows, {pacing} pacing snapshots, rules {', '.join(rule_ids)}; campaign "
            f"{campaigns[SILENCED]['campaign_id']} silenced for {rule_ids[0]} until {utc_iso(now + SILENCE_LENGTH)}")


def _mark_synced(tx: Transaction, org_id: int, now: datetime) -> None:
    """Marks the demo accounts of organization `org_id` synced at `now`, the lagging one LAG before."""
    tx.execute("set_demo_sync_time", org_id=org_id, synced=now.replace(tzinfo=None), lag=LAG,
               lagging_id=LAGGING_ACCOUNT[1])


def _load_metrics(clickhouse: ClickHouse, org_id: int, now: datetime) -> tuple[int, int]:
    """Inserts the demo campaigns' metrics up to today and the pacing snapshots up to `now` of organization `org_id`
    (the same rows on the same day); returns how many of each."""
    rng = random.Random(20261125)
    today = now.astimezone(ZoneInfo(DEMO_TIMEZONE)).date()
    metrics = campaign_metric_rows(org_id, today, demo_campaigns(), rng)
    clickhouse.insert("campaign_metrics_daily", metrics,
                      ["org_id", "date", "dsp_type", "campaign_id", "campaign_name", "advertiser_id", "impressions",
                       "clicks", "conversions", "spend", "cpm", "ctr", "cvr"])
    pacing = pacing_rows(org_id, now, rng)
    clickhouse.insert("pacing_snapshots", pacing,
                      ["org_id", "snapshot_time", "entity_type", "entity_id", "booked_amount", "delivered_amount",
                       "pacing_rate", "days_elapsed", "days_remaining", "projected_spend", "margin_percent"])
    return len(metrics), len(pacing)
