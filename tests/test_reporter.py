"""The report loop's own rules that need no agent to show: when a burst of changes has paused."""

from __future__ import annotations

from datetime import timedelta

from pytest import approx

from batch_agent.burst import SETTLE, SETTLE_MAX, Burst

S, LONGEST = SETTLE.total_seconds(), SETTLE_MAX.total_seconds()


def test_no_change_no_wait() -> None:
    """An idle report (or the first) does not wait."""
    assert Burst().wait(100.0) == 0


def test_a_report_waits_until_the_changes_pause() -> None:
    burst = Burst()
    burst.changed(100.0)
    assert burst.wait(100.0) == approx(S)
    burst.changed(100.003)  # another change of the burst: wait from it
    assert burst.wait(100.004) == approx(S - 0.001)
    assert burst.wait(100.003 + S) == approx(0)


def test_a_burst_that_goes_on_is_reported_after_the_longest_wait() -> None:
    burst = Burst()
    now = 100.0
    while burst.wait(now) > 0 or now == 100.0:
        burst.changed(now)
        now += S / 2  # the next change comes before the burst has paused
    assert now == approx(100.0 + LONGEST, abs=S)


def test_changes_long_before_the_report_do_not_delay_it() -> None:
    """A change made while the report waited for minReportInterval is reported at once."""
    burst = Burst(settle=timedelta(milliseconds=5), longest=timedelta(milliseconds=20))
    burst.changed(100.0)
    assert burst.wait(101.0) == 0


def test_a_new_burst_starts_after_a_report() -> None:
    burst = Burst()
    burst.changed(100.0)
    burst.reported()
    assert burst.wait(100.001) == 0  # nothing since the report
    burst.changed(100.0 + LONGEST)
    assert burst.wait(100.0 + LONGEST) == approx(S)  # counted from this burst's first change
