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


class KeepModelParams(StepParams):
    input: Ref = Field(description="the step whose rows to copy")
    size: int = Field(4096, description="bytes of the fake model's weights file")


class KeepModelStep(Step):
    """Copies its input and keeps a fake model (seeded weights + config) in artifacts/model, as `train` does."""

    kind = "keep_model"
    Params = KeepModelParams

    def run(self, ctx: StepContext) -> StepResult:
        import random

        model = ctx.artifacts / "model"
        model.mkdir()
        (model / "weights.bin").write_bytes(random.Random(ctx.seed).randbytes(ctx.params.size))
        (model / "config.json").write_text('{"hidden_size": 8, "labels": ["neg", "pos"]}\n')
        return StepResult(ctx.inputs["input"].frame())


register("keep_model", "tests.plugin_steps:KeepModelStep")


class UseModelParams(StepParams):
    input: Ref = Field(description="a keep_model step: its rows and its model")


class UseModelStep(Step):
    """Reads its input's model through `InputTable.artifact` and adds a column derived from the weights' bytes."""

    kind = "use_model"
    Params = UseModelParams

    def run(self, ctx: StepContext) -> StepResult:
        import polars as pl
        import xxhash

        model = ctx.inputs["input"].artifact("artifacts/model")
        weights = xxhash.xxh3_64_hexdigest((model / "weights.bin").read_bytes())
        return StepResult(ctx.inputs["input"].frame().with_columns(pl.lit(weights).alias("model")))


register("use_model", "tests.plugin_steps:UseModelStep")


class UnstableParams(StepParams):
    input: Ref = Field(description="the step whose rows to copy")
    threads: int = Field(1, exclude=True, description="runtime-only, as a thread count is: never in a key, yet it "
                                                       "changes the output here (as float sums over threads do)")


class UnstableStep(Step):
    """Copies its input with a score column whose last digits depend on the runtime-only `threads`."""

    kind = "unstable"
    Params = UnstableParams

    def run(self, ctx: StepContext) -> StepResult:
        import polars as pl

        frame = ctx.inputs["input"].frame()
        return StepResult(frame.with_columns(pl.lit(0.5 + 1e-9 * ctx.params.threads).alias("score")))


register("unstable", "tests.plugin_steps:UnstableStep")
