"""The zs progress bars follow a job whose total grows (completion views: two stages)."""

from __future__ import annotations

import numpy as np

from zs_cli.progress import EventBars, StepBar
from zs_core.sampler import StepProgress


def test_step_bar_takes_the_total_the_job_reports():
    bar = StepBar(12)
    preview = np.zeros((2, 2, 3), np.uint8)
    bar(StepProgress(step=1, total=24, preview=preview))
    bar(StepProgress(step=13, total=24, preview=preview))
    assert (bar.bar.n, bar.bar.total) == (13, 24)
    bar.close()


def test_event_bars_take_the_total_of_progress_events():
    bars = EventBars("texture")
    bars("started", {"total": 12})
    bars("progress", {"step": 14, "total": 24})
    assert (bars.bar.n, bars.bar.total) == (14, 24)
    bars("done", {})
    assert bars.bar is None
