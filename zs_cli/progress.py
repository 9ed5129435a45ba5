"""Progress bars on stderr (tqdm) for the sampler's steps, the pass render and a server job."""

from __future__ import annotations

import sys

from tqdm import tqdm


class StepBar:
    """A bar driven by the sampler's per-step ``progress(StepProgress)`` callback."""

    def __init__(self, total: int, description: str = "sampling"):
        self.bar = tqdm(total=total, desc=description, unit="step", file=sys.stderr)

    def __call__(self, progress) -> None:
        if progress.total != self.bar.total:  # a job of two stages (completion views) reports its own total
            self.bar.total = progress.total
            self.bar.refresh()
        self.bar.update(progress.step - self.bar.n)

    def close(self) -> None:
        self.bar.close()


class EventBars:
    """Bars driven by the Blender flow's ``progress(event name, data)``: the pass render
    ("rendering"), then a server job's events (queued, started, progress, done ...)."""

    def __init__(self, command: str):
        self.command = command
        self.bar = None
        self.render_bar = None

    def __call__(self, name: str, data: dict) -> None:
        if name == "rendering":
            if self.render_bar is None:
                self.render_bar = tqdm(total=data["total"], desc="rendering passes", unit=data.get("unit", "view"),
                                       file=sys.stderr)
            self.render_bar.update(data["done"] - self.render_bar.n)
            if data["done"] >= data["total"]:
                self.render_bar.close()
                self.render_bar = None
        elif name == "queued":
            print(f"zs {self.command}: job {data.get('job')} queued (position {data.get('position')})",
                  file=sys.stderr)
        elif name == "started" and self.bar is None:
            self.bar = tqdm(total=data.get("total"), desc="sampling (server)", unit="step", file=sys.stderr)
        elif name == "progress" and self.bar is not None:
            if data.get("total") and data["total"] != self.bar.total:  # completion views: two stages
                self.bar.total = data["total"]
                self.bar.refresh()
            self.bar.update(data["step"] - self.bar.n)
        elif name in ("done", "failed", "cancelled"):
            self.close()

    def close(self) -> None:
        for bar in (self.bar, self.render_bar):
            if bar is not None:
                bar.close()
        self.bar = self.render_bar = None
