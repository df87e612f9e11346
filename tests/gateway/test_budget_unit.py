"""Monthly token budgets (budget.py): the month's tokens are the last totals read from the usage
rows plus what the instance answered since; at the budget a user gets 429 naming the day it
resets; a new month starts at 0; a database that cannot be read leaves the instance counting on."""

import datetime as dt

import pytest

from llm_appliance.gateway import auth, budget, usage_logger
from tests.gateway.test_auth_unit import check, write_keys

DEC_15 = dt.datetime(2026, 12, 15, 12, 0, tzinfo=dt.UTC).timestamp()


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "keys.json"
    write_keys(path, [
        {"name": "alice", "key_sha256": auth.hash_key("sk-alice"), "monthly_tokens": 1000},
        {"name": "bob", "key_sha256": auth.hash_key("sk-bob")},
    ])
    return auth.KeyStore(str(path))


class Totals:
    """The database's answer: totals per name, or an error while it is away."""

    def __init__(self):
        self.totals = {}
        self.down = False
        self.asked = []

    def __call__(self, since, names):
        self.asked.append((since, list(names)))
        if self.down:
            raise OSError("connection refused")
        return {name: tokens for name, tokens in self.totals.items() if name in names}


def budgets_for(store, totals, now):
    # No refresher thread: the tests read with refresh() when they mean to.
    return budget.MonthlyBudgets(store, totals, refresh_s=0, clock=lambda: now[0])


def test_the_month_and_the_day_it_resets():
    assert budget.month_start(DEC_15) == dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    assert budget.next_month_start(dt.datetime(2026, 12, 1, tzinfo=dt.UTC)) == dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    assert budget.next_month_start(dt.datetime(2027, 1, 1, tzinfo=dt.UTC)) == dt.datetime(2027, 2, 1, tzinfo=dt.UTC)


def test_a_user_at_the_budget_gets_429_naming_the_day_it_resets(store):
    totals, now = Totals(), [DEC_15]
    budgets = budgets_for(store, totals, now)
    alice = store.by_name("alice")
    totals.totals = {"alice": 999}
    assert budgets.refresh()
    assert totals.asked == [(dt.datetime(2026, 12, 1, tzinfo=dt.UTC), ["alice"])]  # the budgeted users only
    budgets.check(alice)
    budgets.record("alice", 1)
    with pytest.raises(budget.BudgetExhausted429) as refused:
        budgets.check(alice)
    assert str(refused.value) == (
        "Monthly token budget used up: alice has used 1,000 of 1,000 tokens in 2026-12; "
        "the budget resets on 2027-01-01 at 00:00 UTC. Ask the appliance's operators for more.")
    assert refused.value.status_code == 429
    # A user without a budget is never counted nor refused.
    budgets.record("bob", 10**9)
    budgets.check(store.by_name("bob"))
    assert budgets.used("bob") == 0


def test_own_tokens_count_until_a_read_has_them(store):
    totals, now = Totals(), [DEC_15]
    budgets = budgets_for(store, totals, now)
    budgets.record("alice", 300)
    assert budgets.used("alice") == 300
    # A read some seconds later finds them in the rows (the writer flushed them): not counted twice.
    now[0] += budget.WRITER_GRACE_S + 2
    totals.totals = {"alice": 300 + 200}  # another instance's 200 too
    budgets.refresh()
    assert budgets.used("alice") == 500
    # Tokens answered just before a read may not be in its rows yet: they stay counted until the next.
    budgets.record("alice", 50)
    now[0] += 0.5
    budgets.refresh()
    assert budgets.used("alice") == 550
    now[0] += budget.WRITER_GRACE_S + 1
    totals.totals = {"alice": 550}
    budgets.refresh()
    assert budgets.used("alice") == 550


def test_while_the_database_cannot_be_read_the_instance_counts_on(store, caplog):
    totals, now = Totals(), [DEC_15]
    budgets = budgets_for(store, totals, now)
    totals.totals = {"alice": 900}
    budgets.refresh()
    totals.down = True
    now[0] += 60
    budgets.record("alice", 60)
    now[0] += 60
    assert not budgets.refresh()
    budgets.record("alice", 60)
    assert budgets.used("alice") == 1020
    with pytest.raises(budget.BudgetExhausted429):
        budgets.check(store.by_name("alice"))
    assert "monthly token budgets: the month's totals cannot be read" in caplog.text


def test_a_new_month_starts_at_zero(store):
    totals, now = Totals(), [DEC_15]
    budgets = budgets_for(store, totals, now)
    totals.totals = {"alice": 5000}
    budgets.refresh()
    with pytest.raises(budget.BudgetExhausted429):
        budgets.check(store.by_name("alice"))
    now[0] = dt.datetime(2027, 1, 1, 0, 0, 1, tzinfo=dt.UTC).timestamp()
    totals.totals = {}  # no January rows yet
    assert budgets.used("alice") == 0
    budgets.check(store.by_name("alice"))
    totals.totals = {"alice": 12}
    budgets.refresh()
    assert totals.asked[-1][0] == dt.datetime(2027, 1, 1, tzinfo=dt.UTC) and budgets.used("alice") == 12


def test_the_gate_refuses_inference_over_the_budget_and_still_lists_models(store):
    totals, now = Totals(), [DEC_15]
    totals.totals = {"alice": 1000}
    budgets = budgets_for(store, totals, now)
    budgets.refresh()
    gate = auth.Gate(store, budgets=budgets)
    with pytest.raises(budget.BudgetExhausted429, match="resets on 2027-01-01"):
        check(gate, "sk-alice")
    check(gate, "sk-alice", method="GET", path="/v1/models", body={})
    check(gate, "sk-bob")


def test_monthly_tokens_must_be_a_whole_number():
    entry = {"name": "carol", "key": "sk-carol", "monthly_tokens": "a lot"}
    assert auth.inventory_user_problems([entry]) == [
        "litellm_users[0] (user carol): monthly_tokens must be a whole number of at least 0, got 'a lot'"]
    assert auth.inventory_user_problems([dict(entry, monthly_tokens=2_000_000)]) == []


def test_the_refusals_usage_row_says_budget_exhausted():
    class Refused(Exception):
        status_code = 429
        detail = budget.REFUSAL_PREFIX + ": alice has used ..."

    error = Refused()
    row = usage_logger.rejected_row({"model": "code"}, 429, "/v1/completions", "alice",
                                    usage_logger.refusal_class(error))
    assert row["error_class"] == "BudgetExhausted" and row["status"] == "rejected"
    plain = usage_logger.rejected_row({}, 429, "/v1/completions", "alice",
                                      usage_logger.refusal_class(auth.TooMany429("Rate limit exceeded")))
    assert plain["error_class"] == "RateLimited"


def test_answered_tokens_reach_the_budget_of_the_gate_in_use(store, monkeypatch):
    totals, now = Totals(), [DEC_15]
    budgets = budgets_for(store, totals, now)
    monkeypatch.setattr(auth, "_gate", auth.Gate(store, budgets=budgets))
    usage_logger.record_budget_tokens("alice", 42)
    assert budgets.used("alice") == 42


def test_an_instance_reads_the_totals_before_its_first_budgeted_answer(store):
    """Another instance used the budget up: this one, which has not read yet, refuses at once."""
    totals, now = Totals(), [DEC_15]
    totals.totals = {"alice": 1000}
    budgets = budgets_for(store, totals, now)
    with pytest.raises(budget.BudgetExhausted429):
        budgets.check(store.by_name("alice"))
    # With the database away at that first request, it is tried once, not on every request.
    totals.down, asked = True, len(totals.asked)
    fresh = budgets_for(store, totals, now)
    fresh.check(store.by_name("alice"))
    fresh.check(store.by_name("alice"))
    assert len(totals.asked) - asked == 1
