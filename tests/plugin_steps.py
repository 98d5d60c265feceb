"""Test-only step kinds, registered through $SYNTHFORGE_PLUGINS."""

from __future__ import annotations

import os
import time
from pathlib import Path

from synthforge.steps import register
from synthforge.steps.base import Ref, Step, StepContext, StepParams, StepResult


class SlowParams(StepParams):
    input: Ref
    seconds: float = 0.0
    marker: str = ""


class SlowStep(Step):
    """Copies its input after sleeping; appends a line to $SF_TEST_RUNLOG each time it runs."""

    kind = "slow"
    Params = SlowParams

    def run(self, ctx: StepContext) -> StepResult:
        frame = ctx.inputs["input"].frame()
        (ctx.artifacts / "partial.bin").write_bytes(b"x" * 1024)
        log = os.environ.get("SF_TEST_RUNLOG")
        if log:
            with open(log, "a") as fh:
                fh.write(f"{ctx.key} {os.getpid()}\n")
        Path(ctx.workdir / "started").touch()
        time.sleep(ctx.params.seconds)
        return StepResult(frame)


register("slow", "tests.plugin_steps:SlowStep")
