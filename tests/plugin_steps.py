"""Test-only step kinds, registered through $SYNTHFORGE_PLUGINS."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pydantic import Field

from synthforge.progress import progress
from synthforge.steps import register
from synthforge.steps.base import Ref, Step, StepContext, StepParams, StepResult


class SlowParams(StepParams):
    input: Ref = Field(description="the step whose rows to copy")
    marker: str = Field("", description="any text; a different one gives a different key")


class SlowStep(Step):
    """Copies its input after sleeping $SF_TEST_SLEEP seconds (and until $SF_TEST_RELEASE exists); logs each run to $SF_TEST_RUNLOG."""

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
        time.sleep(float(os.environ.get("SF_TEST_SLEEP", "0")))
        release = os.environ.get("SF_TEST_RELEASE")  # a file: finish only once the test creates it
        with progress(frame.height, f"{ctx.step}: copy", enabled=ctx.runtime.progress) as bar:
            bar.update(frame.height // 2, tokens=10 * frame.height)  # half way, then wait: the parent sees it live
            ctx.log(f"half of {frame.height} rows copied")
            deadline = time.time() + float(os.environ.get("SF_TEST_RELEASE_WAIT", "120"))
            while release and not Path(release).exists() and time.time() < deadline:
                time.sleep(0.05)
            bar.update(frame.height - frame.height // 2)
        return StepResult(frame)


register("slow", "tests.plugin_steps:SlowStep")


class CrashOnceParams(StepParams):
    input: Ref = Field(description="the step whose rows to copy")
    marker: str = Field(
        exclude=True, description="a file path, absent on the first run, which then kills its own process; runtime-only, never in a key"
    )


class CrashOnceStep(Step):
    """Copies its input; the first run (no marker file yet) SIGKILLs its worker process mid-task."""

    kind = "crash_once"
    Params = CrashOnceParams

    def run(self, ctx: StepContext) -> StepResult:
        import signal

        marker = Path(ctx.params.marker)
        if not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return StepResult(ctx.inputs["input"].frame())


register("crash_once", "tests.plugin_steps:CrashOnceStep")
