"""Per-session submission rate (digitlib.limits): a token bucket, its settings from the environment."""

import pytest

from digitlib.limits import TokenBucket, submission_limit


def test_token_bucket_allows_a_burst_then_the_rate():
    now = [0.0]
    bucket = TokenBucket(per_minute=30, burst=3, clock=lambda: now[0])
    assert [bucket.allow() for _ in range(4)] == [True, True, True, False]
    assert bucket.wait_s() == pytest.approx(2.0)  # 30 a minute: one every 2 s
    now[0] += 1.9
    assert not bucket.allow()
    now[0] += 0.1
    assert bucket.allow() and not bucket.allow()
    now[0] += 3600
    assert [bucket.allow() for _ in range(4)] == [True, True, True, False]  # never more than the burst


def test_rate_limit_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("DIGITLIB_SUBMIT_RATE", "6")
    monkeypatch.setenv("DIGITLIB_SUBMIT_BURST", "2")
    bucket = submission_limit()
    assert bucket.burst == 2 and bucket.rate_per_s == pytest.approx(0.1)
    monkeypatch.setenv("DIGITLIB_SUBMIT_RATE", "0")
    with pytest.raises(ValueError, match="DIGITLIB_SUBMIT_RATE"):
        submission_limit()
