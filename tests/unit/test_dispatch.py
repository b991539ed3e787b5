"""How long a scheduled run keeps dispatching (dispatch.seconds_to_run, dispatch.run): it
ends before the schedule's next tick whatever its start time, since Cloud Scheduler
never starts a job's next execution before the last one has ended."""

import pytest

from functions import dispatch, revoke_expired, sweep, work_items

PERIOD = 60.0
TICK = 1_800_000_000.0  # a minute boundary (seconds since the epoch), as Cloud Scheduler's cron fires


@pytest.mark.parametrize("late", [0.0, 0.3, 10.0, 45.0, 58.5, -0.5])
def test_a_run_ends_before_the_next_tick_whatever_its_start(late):
    started = TICK + late
    ends = started + dispatch.seconds_to_run(started, PERIOD)
    assert ends <= TICK + PERIOD - dispatch.END_MARGIN_SECONDS + 1e-6
    assert ends >= started


def test_a_run_on_time_dispatches_for_its_whole_period_less_the_margin():
    assert dispatch.seconds_to_run(TICK, PERIOD) == pytest.approx(PERIOD - dispatch.END_MARGIN_SECONDS)
    # Fired a little early by a skewed clock, it still belongs to the coming tick.
    assert dispatch.seconds_to_run(TICK - 0.5, PERIOD) == pytest.approx(PERIOD - dispatch.END_MARGIN_SECONDS + 0.5)


def test_without_a_period_a_run_is_one_pass():
    assert dispatch.seconds_to_run(TICK + 12.0, 0.0) == 0.0


class Clock:
    """time.time, time.monotonic and time.sleep over one simulated clock."""

    def __init__(self, at: float):
        self.at = at

    def time(self) -> float:
        return self.at

    def sleep(self, seconds: float) -> None:
        self.at += max(0.0, seconds)


def test_a_run_started_late_ends_before_the_next_tick(monkeypatch):
    clock = Clock(TICK + 40.0)  # the last execution ran long: this one starts 40 s late
    polls = []
    monkeypatch.setenv("SCHEDULE_PERIOD_SECONDS", str(PERIOD))
    monkeypatch.setenv("SWEEP_BUDGET_SECONDS", "90")
    monkeypatch.setenv("RBM_WORK_TOPIC", "work")
    monkeypatch.setattr(dispatch.time, "time", clock.time)
    monkeypatch.setattr(dispatch.time, "monotonic", clock.time)
    monkeypatch.setattr(dispatch.time, "sleep", clock.sleep)
    monkeypatch.setattr(sweep, "due", lambda s, until, since: polls.append(clock.at) or [])
    monkeypatch.setattr(work_items, "publish", lambda batch: None)
    dispatch.run(revoke_expired.REVOKE)
    assert polls and polls[0] == TICK + 40.0
    assert clock.at <= TICK + PERIOD - dispatch.END_MARGIN_SECONDS, "the run held the next tick back"
    assert polls[-1] >= TICK + PERIOD - dispatch.END_MARGIN_SECONDS - dispatch.POLL_SECONDS
