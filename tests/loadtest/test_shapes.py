"""The load shapes, in multiples of the normal peak: who is on, and when."""

from __future__ import annotations

from loadtest import shapes


def test_flash_crowd_reaches_the_multiple_of_the_peak_within_the_ramp_and_holds_it() -> None:
    stages = shapes.flash_crowd(peak=50, multiple=8, sale_starts_in=20, hold=60, ramp=3)
    assert shapes.at(stages, 0) == shapes.Stage(until=17, users=25, spawn_rate=12.5)  # half the peak browses
    crowd = shapes.at(stages, 17.5)
    assert crowd is not None and crowd.users == 400
    assert (crowd.users - 25) / crowd.spawn_rate <= 3  # all 400 on within 3 s of the ramp's start
    assert shapes.at(stages, 79.9) == crowd
    assert shapes.at(stages, 80) is None  # the test stops after the hold


def test_steps_climb_one_multiple_per_step() -> None:
    stages = shapes.steps(peak=50, step_seconds=10)
    assert [s.users for s in stages] == [50, 100, 200, 300, 400, 500]
    assert [s.until for s in stages] == [10, 20, 30, 40, 50, 60]
    mid = shapes.at(stages, 25)
    assert mid is not None and mid.users == 200
    assert shapes.at(stages, 60) is None


def test_soak_holds_the_multiple_for_its_duration() -> None:
    stages = shapes.soak(peak=20, multiple=5, seconds=1800, ramp=30)
    held = shapes.at(stages, 1000)
    assert held is not None and held.users == 100
    assert shapes.at(stages, 1830) is None


def test_journeys_put_every_shopper_on_at_the_spawn_rate_for_at_most_the_given_seconds() -> None:
    stages = shapes.journeys(users=1000, spawn_rate=250, seconds=120)
    on = shapes.at(stages, 0)
    assert on is not None and (on.users, on.spawn_rate) == (1000, 250)
    assert shapes.at(stages, 119.9) == on
    assert shapes.at(stages, 120) is None  # the cap; the locustfile stops sooner once every shopper walked
