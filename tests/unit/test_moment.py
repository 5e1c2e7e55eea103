"""The run moment: one value for a sync run's window, batch id and "as of" (issue 23)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from returnledger.moment import RunMoment, batch_id_for

END = datetime(2026, 10, 8, tzinfo=UTC)


def test_the_batch_id_is_the_one_the_rows_have_always_carried():
    assert batch_id_for(END) == "returns_sync:2026-10-08T00:00Z"
    assert batch_id_for(datetime(2026, 10, 8, 2, 0, tzinfo=timezone(timedelta(hours=2)))) == batch_id_for(END)
    assert RunMoment(END).batch_id == batch_id_for(END)
    assert RunMoment(END, batch_id="test:1").batch_id == "test:1"


def test_as_of_is_the_end_of_the_window():
    run = RunMoment(END, END - timedelta(days=1))
    assert run.as_of == run.end == END and run.start == END - timedelta(days=1)
    assert RunMoment(END).start is None  # a run for a moment only: no start is booked


def test_it_travels_between_tasks_as_the_xcom_the_dag_always_had():
    run = RunMoment(END, END - timedelta(days=1))
    window = run.to_xcom()
    assert window == {
        "window_start": "2026-10-07T00:00:00+00:00",
        "window_end": "2026-10-08T00:00:00+00:00",
        "batch_id": "returns_sync:2026-10-08T00:00Z",
    }
    assert RunMoment.from_xcom({**window, "extract": {"delivered": 3}}) == run
    # an older XCom (or a test's) without window_start
    assert RunMoment.from_xcom({"window_end": END.isoformat(), "batch_id": "b"}) == RunMoment(END, None, "b")
