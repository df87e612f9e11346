"""Monthly token budgets: `monthly_tokens` of a user in the keys file, the same on every gateway
instance and every gateway host.

The count is the usage rows themselves, the numbers the report shows: each instance reads the
calendar month's (UTC) tokens of its budgeted users from PostgreSQL every few seconds, through a
function that answers those sums alone (the gateway's role may insert rows, not read them), and
adds the tokens it recorded since. Not Redis: its counters are not kept on disk, a month's count
must outlive a restart. A user at or over the budget gets 429 naming the day it resets, the first
of the next month at 00:00 UTC.

Bounds, said in the operator's guide: the check comes before the answer, so the request that
crosses the budget is answered in full; another instance's tokens are seen within the refresh
interval plus the usage writer's flush; while PostgreSQL cannot be read, each instance counts on
from the last total it read plus its own tokens.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from llm_appliance.gateway.auth import KeyStore, TooMany429, User

log = logging.getLogger("llm_appliance.budget")

# The first words of the refusal: the usage row of a refused request is told apart by them.
REFUSAL_PREFIX = "Monthly token budget used up"
# A row is written by the usage writer within its flush interval (1 s) of the request's end: the
# instance's own tokens are counted on for this long after a read, in case the read missed them.
WRITER_GRACE_S = 3.0

TotalsReader = Callable[[dt.datetime, list[str]], dict[str, int]]


class BudgetExhausted429(TooMany429):
    pass


def month_start(now: float) -> dt.datetime:
    moment = dt.datetime.fromtimestamp(now, dt.UTC)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month_start(start: dt.datetime) -> dt.datetime:
    return (start + dt.timedelta(days=32)).replace(day=1)


def refusal(user: User, used: int, start: dt.datetime) -> str:
    return (f"{REFUSAL_PREFIX}: {user.name} has used {used:,} of {user.monthly_tokens:,} tokens in "
            f"{start:%Y-%m}; the budget resets on {next_month_start(start):%Y-%m-%d} at 00:00 UTC. "
            "Ask the appliance's operators for more.")


class MonthlyBudgets:
    """The month's tokens of each budgeted user: the last total read from PostgreSQL plus what this
    instance recorded since."""

    def __init__(self, store: KeyStore, read_totals: TotalsReader | None, refresh_s: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.read_totals = read_totals
        self.refresh_s = refresh_s
        self.clock = clock
        self._lock = threading.Lock()
        self._month: dt.datetime | None = None
        self._totals: dict[str, int] = {}
        self._read_at: float | None = None
        self._own: dict[str, list[tuple[float, int]]] = {}
        self._thread: threading.Thread | None = None
        self._said_unreadable_at = 0.0
        # One read at a time: the refresher's, or the first budgeted request's (check).
        self._read_lock = threading.Lock()
        self._first_read_tried = False

    def budgeted(self) -> list[str]:
        return sorted(u.name for u in self.store.users().values() if u.monthly_tokens)

    def _roll(self, now: float) -> dt.datetime:
        """The month of `now`; a new month starts every count at 0. Called with the lock held."""
        start = month_start(now)
        if start != self._month:
            self._month, self._totals, self._read_at, self._own = start, {}, None, {}
        return start

    def used(self, name: str) -> int:
        now = self.clock()
        with self._lock:
            self._roll(now)
            since = self._read_at - WRITER_GRACE_S if self._read_at is not None else float("-inf")
            own = sum(tokens for at, tokens in self._own.get(name, ()) if at >= since)
            return self._totals.get(name, 0) + own

    def check(self, user: User) -> None:
        """BudgetExhausted429 when the user has a budget and has used it up this month."""
        if not user.monthly_tokens:
            return
        self.start()
        if self._read_at is None and not self._first_read_tried:
            # An instance that has not read the month's totals yet would let a user who used up the
            # budget elsewhere through: the first budgeted request waits for one read (once only:
            # with the database away, the others go on with what this instance counts).
            self._first_read_tried = True
            self.refresh()
        used = self.used(user.name)
        if used >= user.monthly_tokens:
            raise BudgetExhausted429(refusal(user, used, month_start(self.clock())))

    def record(self, name: str | None, tokens: int) -> None:
        """Tokens of an answered request, under its key's user."""
        if not name or tokens <= 0:
            return
        user = self.store.by_name(name)
        if user is None or not user.monthly_tokens:
            return
        now = self.clock()
        with self._lock:
            self._roll(now)
            self._own.setdefault(name, []).append((now, tokens))

    def refresh(self) -> bool:
        """Reads the month's totals of every budgeted user; False when PostgreSQL could not answer."""
        names = self.budgeted()
        if not names or self.read_totals is None:
            return True
        started = self.clock()
        start = month_start(started)
        try:
            with self._read_lock:
                totals = self.read_totals(start, names)
        except Exception as err:  # noqa: BLE001 - counted on locally until the database answers
            if started - self._said_unreadable_at > 300:
                self._said_unreadable_at = started
                log.error("monthly token budgets: the month's totals cannot be read (%s: %s); each instance "
                          "counts on from the last totals it read plus its own", type(err).__name__, err)
            return False
        with self._lock:
            if self._roll(started) == start:
                self._totals = {name: int(totals.get(name, 0)) for name in names}
                self._read_at = started
                keep_from = started - WRITER_GRACE_S
                self._own = {name: [(at, t) for at, t in own if at >= keep_from] for name, own in self._own.items()}
        return True

    def start(self) -> None:
        """The refresher thread, started with the first budgeted request (none with refresh_s 0:
        then only refresh() reads)."""
        if self._thread is not None or self.read_totals is None or self.refresh_s <= 0:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="token-budgets", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            self.refresh()
            time.sleep(self.refresh_s)


TOTALS_SQL = "SELECT key_alias, tokens FROM tokens_used_since(%s, %s)"


class PostgresTotals:
    """The month's tokens per key alias, from the schema's tokens_used_since() (usage_report's schema)."""

    def __init__(self, dsn: str, connect: Callable[[str], Any]) -> None:
        self.dsn = dsn
        self.connect = connect
        self._conn: Any = None

    def __call__(self, since: dt.datetime, names: list[str]) -> dict[str, int]:
        if self._conn is None or self._conn.closed:
            self._conn = self.connect(self.dsn)
        try:
            with self._conn.cursor() as cur:
                cur.execute(TOTALS_SQL, (since, names))
                rows = cur.fetchall()
            self._conn.rollback()  # a read: end the transaction, keep the connection
        except Exception:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
            raise
        return {str(alias): int(tokens or 0) for alias, tokens in rows}
