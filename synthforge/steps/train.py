"""`train`: fit a classifier on one table, score it on held-out real data.

`method: linear-probe` fits multinomial logistic regression on frozen sentence
embeddings (the `embedding` column when train and test both have one, else the
text embedded with `model`). `method: finetune` fine-tunes `model` end to end.
Both run once per seed and report accuracy and macro-F1 with a t-interval over
seeds and a bootstrap interval over the test set (see `training/scoring.py`).
Seeds whose predictions are identical (a linear probe is deterministic) count
once: `n_distinct_seeds` says how many differ, and only those enter the intervals.

Main table: one row per seed. Side table `predictions`: one row per (seed, test row).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from synthforge.errors import UserError
from synthforge.stepapi import Ref, Seed, StepContext, StepParams, StepResult
from synthforge.text_tables import plural
from synthforge.steps.base import Step

DEFAULT_NUM_SEEDS = {"linear-probe": 1, "finetune": 3, "sft": 3}
SFT_ONLY = ("prompt", "response", "lora_rank", "lora_alpha", "lora_dropout", "lora_targets")
SFT_DEFAULTS = {"prompt": "{{ prompt }}", "response": "response", "lora_rank": 8, "lora_alpha": 16.0, "lora_dropout": 0.05}
OTHER_ANSWER = "(other)"  # an sft prediction that is none of the labels


class TrainParams(StepParams):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"train": "rows", "test": "held_out"},
        {"train": "rows", "test": "held_out", "method": "sft", "prompt": "Review: {{ text }}", "response": "label",
         "lora_rank": 4, "lora_alpha": 8.0, "lora_dropout": 0.1, "lora_targets": ["c_attn"]},
    ]})
    train: Ref = Field(description="the step (or step.table) of training rows with id, text and label")
    test: Ref = Field(description="the step (or step.table) of held-out real rows the model is scored on")
    validation: Ref | None = Field(
        None, description="the step (or step.table) of rows for finetune's early stopping (linear-probe ignores it)"
    )
    method: Literal["linear-probe", "finetune", "sft"] = Field(
        "linear-probe", description="`linear-probe` (logistic regression on frozen sentence embeddings), `finetune` (the whole "
        "encoder) or `sft` (LoRA fine-tuning of a causal LM on prompt/response records)"
    )
    model: str | None = Field(
        None, description="a local transformers model folder (default: the packaged all-MiniLM-L6-v2; for sft the packaged "
        "SmolLM2-135M-Instruct, also named `smollm2`); its files' content enters the key"
    )
    prompt: str | None = Field(
        None, exclude_if=lambda value: value is None,
        description="sft: the jinja2 template of a record's prompt over its columns, e.g. 'Review: {{ text }}' (default: "
        "'{{ prompt }}', the prompt column)",
    )
    response: str | None = Field(
        None, exclude_if=lambda value: value is None,
        description="sft: the column of the response learnt and scored (default: response); `label` makes the task "
        "instruction-formatted classification, scored by exact match too",
    )
    lora_rank: int | None = Field(
        None, ge=1, le=256, exclude_if=lambda value: value is None, description="sft: the LoRA rank r, 1..256 (default 8)"
    )
    lora_alpha: float | None = Field(
        None, gt=0.0, exclude_if=lambda value: value is None,
        description="sft: the LoRA scaling alpha (> 0; the update is scaled by alpha / r; default 16)",
    )
    lora_dropout: float | None = Field(
        None, ge=0.0, lt=1.0, exclude_if=lambda value: value is None, description="sft: dropout on the LoRA input, in [0, 1) (default 0.05)"
    )
    lora_targets: list[str] | None = Field(
        None, min_length=1, exclude_if=lambda value: value is None,
        description="sft: names of the linear modules that get adapters, e.g. [q_proj, v_proj] (default: peft's choice for "
        "the architecture)",
    )
    seeds: list[Seed] | None = Field(
        None, description="a list of distinct training seeds (0 to 2^31 - 1), one model each (or use num_seeds)"
    )
    num_seeds: int | None = Field(
        default=None, ge=1,
        description="the number of training seeds: the step's seed, seed+1... (default: 1 for linear-probe, 3 for finetune)",
    )
    l2: float = Field(default=1.0, ge=0.0, description="linear-probe: the L2 penalty strength (sklearn's 1/C), >= 0")
    max_iter: int = Field(default=300, ge=1, description="linear-probe: the most L-BFGS iterations")
    epochs: int = Field(default=3, ge=1, description="finetune: the most passes over the training rows")
    learning_rate: float = Field(default=5e-5, gt=0.0, description="finetune: the peak AdamW learning rate (> 0)")
    train_batch_size: int = Field(default=16, ge=1, description="finetune: training rows per optimiser step")
    warmup_ratio: float = Field(
        default=0.1, ge=0.0, le=1.0, description="finetune: the share of steps, 0..1, over which the learning rate warms up linearly"
    )
    weight_decay: float = Field(default=0.01, ge=0.0, description="finetune: AdamW's weight decay (>= 0)")
    max_length: int = Field(default=128, ge=8, description="finetune: the most tokens of a text (longer texts are truncated)")
    patience: int | None = Field(
        default=2, ge=1,
        description="finetune: epochs without a better validation score before stopping (null: no early stopping)",
    )
    save_models: Literal["first", "all", "none"] = Field(
        "first", description="which trained models to keep in the entry's artifacts: `first` seed's, `all`, or `none`"
    )
    bootstrap: int = Field(
        default=1000, ge=0, description="the number of test-set bootstrap resamples for the intervals (0: none)"
    )
    confidence: float = Field(default=0.95, gt=0.0, lt=1.0, description="the level of the reported intervals, in (0, 1)")
    batch_size: int | None = Field(
        default=None, ge=1, exclude=True,
        description="rows per inference or embedding batch (64 when neither this nor --batch-size is set); runtime-only, never in a key",
    )
    device: str = Field(
        default="auto", exclude=True,
        description="cpu, cuda:0... or `auto` (CUDA when present); runtime-only, never in a key",
    )

    @model_validator(mode="after")
    def _sft_fields(self) -> "TrainParams":
        stray = [name for name in SFT_ONLY if getattr(self, name) is not None]
        if self.method != "sft" and stray:
            raise ValueError(f"'{stray[0]}' applies to method sft only (this step's method is {self.method})")
        return self

    def sft_setting(self, name: str) -> Any:
        """An sft field's value, its default when left out."""
        value = getattr(self, name)
        return SFT_DEFAULTS.get(name) if value is None else value

    @model_validator(mode="after")
    def _seeds(self) -> "TrainParams":
        if self.seeds is not None and self.num_seeds is not None:
            raise ValueError("give seeds or num_seeds, not both")
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise ValueError("seeds must be a non-empty list of distinct integers")
        return self


class TrainStep(Step):
    kind = "train"
    version = "3"  # 2: seeds with identical predictions count once; 3: wall times left the table (meta only)
    Params = TrainParams
    tables = ("predictions",)

    def files_read(self, params: TrainParams) -> list[Path]:  # type: ignore[override]
        from synthforge.keys import model_files

        if params.method == "sft":
            return _sft_model_files(params.model)
        folder = Path(params.model) if params.model else Path(_default_model())
        return model_files(folder) if folder.is_dir() else []

    def plan_note(self, params: TrainParams) -> str | None:  # type: ignore[override]
        if params.method == "sft":
            return f"sft (LoRA r={params.sft_setting('lora_rank')}), {len(resolve_seeds(params, 0))} seed(s)"
        return f"{params.method}, {len(resolve_seeds(params, 0))} seed(s)"

    def run(self, ctx: StepContext) -> StepResult:
        import polars as pl

        from synthforge.training.scoring import summarize

        params: TrainParams = ctx.params  # type: ignore[assignment]
        if params.method == "sft":
            return _run_sft(ctx, params)
        _check_model(params)
        frames = {name: _frame(ctx.inputs.get(name), name) for name in ("train", "test", "validation")}
        labels = _labels(frames, ctx.log)
        targets = {name: _targets(frame, labels) for name, frame in frames.items()}
        seeds = resolve_seeds(params, ctx.seed)
        runner = _run_linear_probe if params.method == "linear-probe" else _run_finetune
        runs = runner(ctx, params, frames, targets, labels, seeds)
        distinct = distinct_runs(runs)
        if len(distinct) < len(runs):
            ctx.log(f"train: {plural(len(runs), 'seed')} gave {plural(len(distinct), 'distinct prediction set')}; each counts once")
        summary = summarize(
            targets["test"], [r["pred"] for r in distinct], labels, resamples=params.bootstrap, confidence=params.confidence, seed=ctx.seed
        )
        scores_by_seed = dict(zip((r["seed"] for r in distinct), summary.pop("per_seed_scores")))
        per_seed = [
            {"seed": r["seed"], **scores_by_seed.get(r["seed"], scores_by_seed[_twin(r, distinct)]), **r["info"]} for r in runs
        ]
        meta = {
            "method": params.method,
            "model": params.model or "all-MiniLM-L6-v2 (packaged)",
            "labels": labels,
            "seeds": seeds,
            "n_distinct_seeds": len(distinct),
            "n_train": frames["train"].height,
            "n_test": frames["test"].height,
            "n_validation": frames["validation"].height if frames["validation"] is not None else 0,
            "train_sources": _source_counts(frames["train"]),
            **summary,
            "per_seed": per_seed,
        }
        acc = meta["scores"]["accuracy"]
        ctx.log(score_line(meta["scores"]))
        predictions = pl.concat([_predictions(frames["test"], r, labels) for r in runs])
        return StepResult(data=_seed_table(per_seed), tables={"predictions": predictions}, meta=_jsonable(meta))


def distinct_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first run of each set of identical predictions: seeds that change nothing are not replication."""
    seen: set[bytes] = set()
    kept = []
    for run in runs:
        fingerprint = run["pred"].tobytes()
        if fingerprint not in seen:
            seen.add(fingerprint)
            kept.append(run)
    return kept


def _twin(run: dict[str, Any], distinct: list[dict[str, Any]]) -> int:
    return next(d["seed"] for d in distinct if d["pred"].tobytes() == run["pred"].tobytes())


# -- inputs ------------------------------------------------------------------
def resolve_seeds(params: TrainParams, base_seed: int) -> list[int]:
    if params.seeds is not None:
        return list(params.seeds)
    count = params.num_seeds or DEFAULT_NUM_SEEDS[params.method]
    return [int(base_seed) + i for i in range(count)]


def _default_model() -> str:
    from synthforge.backends.embedder import DEFAULT_MODEL, model_path

    return str(model_path(DEFAULT_MODEL))


def _check_model(params: TrainParams) -> None:
    if params.model and not (Path(params.model) / "config.json").exists():
        raise UserError(f"no model at '{params.model}' (expected a folder with config.json)", field="model")


def _frame(table: Any, name: str):
    if table is None:
        return None
    frame = table.frame()
    missing = {"id", "text", "label"} - set(frame.columns)
    if missing:
        raise UserError(f"input '{name}' lacks column(s) {sorted(missing)}", field=name)
    if frame.height == 0 and name != "validation":
        raise UserError(f"input '{name}' has no rows", field=name)
    return frame


def _labels(frames: dict[str, Any], log) -> list[str]:
    train = set(frames["train"]["label"].cast(str).to_list())
    everything = set(train)
    for name in ("test", "validation"):
        if frames[name] is not None:
            extra = set(frames[name]["label"].cast(str).to_list()) - train
            if extra:
                log(f"train: warning: {name} labels never seen in training: {sorted(extra)}")
            everything |= extra
    if len(train) < 2:
        raise UserError(f"the train table has {len(train)} label(s) ({sorted(train)}); a classifier needs at least 2", field="train")
    return sorted(everything)


def _targets(frame, labels: list[str]):
    import numpy as np

    if frame is None:
        return None
    index = {label: i for i, label in enumerate(labels)}
    return np.array([index[str(label)] for label in frame["label"].to_list()], dtype=np.int64)


def _source_counts(frame) -> dict[str, int]:
    if "source" not in frame.columns:
        return {}
    return {str(k): int(v) for k, v in frame.group_by("source").len().iter_rows()}


# -- methods -----------------------------------------------------------------
def _runtime(ctx: StepContext, params: TrainParams) -> tuple[str, int]:
    from synthforge.backends.devices import pick_device

    device = ctx.runtime.resolve("device", params.device, default="auto")
    return pick_device(device), ctx.runtime.resolve("batch_size", params.batch_size, default=64)


def _features(ctx: StepContext, params: TrainParams, frames: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Embeddings for train and test: the `embedding` column when both have a complete one, else embedded text."""
    from synthforge.steps.rows import EMBEDDING_COLUMN, embeddings_of

    if all(EMBEDDING_COLUMN in frames[n].columns and frames[n][EMBEDDING_COLUMN].null_count() == 0 for n in ("train", "test")):
        features = {n: embeddings_of(frames[n]) for n in ("train", "test")}
        if features["train"].shape[1] != features["test"].shape[1]:
            raise UserError(
                f"train embeddings have {features['train'].shape[1]} dims but test embeddings {features['test'].shape[1]}",
                field="test",
                hint="embed both with the same model",
            )
        return features, "embedding column"
    from synthforge.backends.embedder import DEFAULT_MODEL, get_embedder
    from synthforge.progress import progress

    device, batch_size = _runtime(ctx, params)
    embedder = get_embedder(params.model or DEFAULT_MODEL, device)
    features = {}
    for n in ("train", "test"):
        with progress(frames[n].height, f"{ctx.step}: embed {n}", enabled=ctx.runtime.progress) as bar:
            features[n] = embedder.embed(frames[n]["text"].to_list(), batch_size, bar)
    return features, f"text embedded with {params.model or 'all-MiniLM-L6-v2'}"


def _run_linear_probe(ctx, params: TrainParams, frames, targets, labels, seeds) -> list[dict[str, Any]]:
    from synthforge.training.linear_probe import fit_linear_probe

    features, how = _features(ctx, params, frames)
    ctx.log(f"train: linear probe on {how} ({features['train'].shape[1]} dims)")
    runs = []
    for seed in seeds:
        start = time.perf_counter()
        probe = fit_linear_probe(features["train"], targets["train"], len(labels), params.l2, params.max_iter, seed)
        probs = probe.predict_proba(features["test"])
        info = {"train_seconds": time.perf_counter() - start, "iterations": probe.iterations}
        runs.append({"seed": seed, "pred": probs.argmax(axis=1), "probs": probs, "info": info})
    return runs


def _run_finetune(ctx, params: TrainParams, frames, targets, labels, seeds) -> list[dict[str, Any]]:
    from synthforge.training.finetune import FinetuneConfig, finetune, predict_proba

    device, batch_size = _runtime(ctx, params)
    config = FinetuneConfig(
        epochs=params.epochs,
        learning_rate=params.learning_rate,
        train_batch_size=params.train_batch_size,
        warmup_ratio=params.warmup_ratio,
        weight_decay=params.weight_decay,
        max_length=params.max_length,
        patience=params.patience,
    )
    model_path = params.model or _default_model()
    validation = frames["validation"]
    runs = []
    for number, seed in enumerate(seeds):
        ctx.log(f"train: fine-tuning seed {seed} on {device} ({number + 1}/{len(seeds)})")
        start = time.perf_counter()
        result = finetune(
            frames["train"]["text"].to_list(),
            targets["train"],
            labels,
            model_path,
            config,
            seed=seed,
            device=device,
            val_texts=validation["text"].to_list() if validation is not None else None,
            val_targets=targets["validation"],
            eval_batch_size=batch_size,
            show_progress=ctx.runtime.progress,
            log=ctx.log,
        )
        train_seconds = time.perf_counter() - start
        probs = predict_proba(result.model, result.tokenizer, frames["test"]["text"].to_list(), device, batch_size, params.max_length)
        saved = _save_model(ctx, params, result, seed, number)
        info = {
            "train_seconds": train_seconds,
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "history": result.history,
            "model_dir": saved,
        }
        runs.append({"seed": seed, "pred": probs.argmax(axis=1), "probs": probs, "info": info})
    return runs


def _save_model(ctx: StepContext, params: TrainParams, result, seed: int, number: int) -> str | None:
    if params.save_models == "none" or (params.save_models == "first" and number > 0):
        return None
    name = "model" if params.save_models == "first" else f"model-seed{seed}"
    folder = ctx.artifacts / name
    result.model.save_pretrained(folder)
    result.tokenizer.save_pretrained(folder)
    return f"artifacts/{name}"


# -- sft -----------------------------------------------------------------------
def _run_sft(ctx: StepContext, params: TrainParams) -> StepResult:
    """LoRA SFT once per seed; response loss and perplexity on the test rows, exact match when responses are labels."""
    from synthforge.training.scoring import summarize_losses

    template, response = params.sft_setting("prompt"), params.sft_setting("response")
    frames = {name: _sft_frame(ctx.inputs.get(name), name, template, response) for name in ("train", "test")}
    records = {name: (_render_prompts(frame, template), frame[response].cast(str).to_list()) for name, frame in frames.items()}
    labels = sorted(set(records["train"][1]) | set(records["test"][1])) if response == "label" else None
    seeds = resolve_seeds(params, ctx.seed)
    folder = _sft_model_folder(params.model, ctx.cache.shared_dir("models"), ctx.log)
    runs = [_sft_seed(ctx, params, folder, records, labels, seed, number, len(seeds)) for number, seed in enumerate(seeds)]
    losses = summarize_losses([r["nll"] for r in runs], runs[0]["tokens"], resamples=params.bootstrap,
                              confidence=params.confidence, seed=ctx.seed)
    per_seed = [{"seed": r["seed"], **scores, **r["info"]} for r, scores in zip(runs, losses["per_seed_scores"])]
    scores = losses["scores"]
    if labels is not None:
        scores = {"exact_match": _exact_match(records["test"][1], runs, labels, params, ctx.seed, per_seed), **scores}
    meta = {
        "method": "sft",
        "model": params.model or "SmolLM2-135M-Instruct (packaged)",
        "prompt": template,
        "response": response,
        **({"labels": labels} if labels is not None else {}),
        "seeds": seeds,
        "n_distinct_seeds": len(seeds),
        "n_train": frames["train"].height,
        "n_test": frames["test"].height,
        "test_response_tokens": int(runs[0]["tokens"].sum()),
        "train_sources": _source_counts(frames["train"]),
        "scores": scores,
        "confidence": params.confidence,
        "bootstrap_resamples": params.bootstrap,
        "per_seed": per_seed,
    }
    ctx.log(sft_score_line(scores))
    import polars as pl

    predictions = pl.concat([_sft_predictions(frames["test"], r, records["test"][1], labels) for r in runs])
    return StepResult(data=_seed_table(per_seed), tables={"predictions": predictions}, meta=_jsonable(meta))


def _sft_model_files(model: str | None) -> list[Path]:
    """The files whose content is the base model's identity (the packaged SmolLM2's GGUF by default)."""
    from synthforge.backends.transformers_llm import SMOLLM2, identity_files

    try:
        return identity_files(model or SMOLLM2)
    except UserError as exc:  # the backend names its own field; here the model is the train step's
        raise UserError(exc.message, field="model", hint=exc.hint) from None


def _sft_model_folder(model: str | None, models_dir: Path, log) -> str:
    """A loadable folder: the packaged SmolLM2 converted once per cache, or the given folder."""
    from synthforge.backends.transformers_llm import SMOLLM2, ensure_smollm2

    if not model or model == SMOLLM2:
        return str(ensure_smollm2(models_dir, log))
    return str(Path(model).expanduser())


def _sft_frame(table: Any, name: str, template: str, response: str):
    from synthforge.errors import did_you_mean
    from synthforge.generation.prompts import check_template

    frame = table.frame()
    columns = set(frame.columns)
    if "id" not in columns:
        raise UserError(f"input '{name}' lacks the id column", field=name)
    if response not in columns:
        hint = did_you_mean(response, columns) or f"its columns: {', '.join(sorted(columns))}"
        raise UserError(f"input '{name}' has no response column '{response}'", field="response", hint=hint)
    check_template(template, "prompt", columns)
    if frame.height == 0:
        raise UserError(f"input '{name}' has no rows", field=name)
    empty = frame.filter(frame[response].is_null() | (frame[response].cast(str).str.strip_chars() == ""))
    if empty.height:
        raise UserError(f"input '{name}' has {plural(empty.height, 'row')} without a '{response}' (first: id {empty['id'][0]})",
                        field="response", hint="drop those rows upstream, or name another column")
    return frame


def _render_prompts(frame, template: str) -> list[str]:
    from synthforge.generation.prompts import PromptTemplate

    prompt = PromptTemplate(template, "prompt")
    return [prompt.render(row) for row in frame.drop("embedding", strict=False).iter_rows(named=True)]


def _sft_seed(ctx: StepContext, params: TrainParams, folder: str, records, labels, seed: int, number: int, count: int) -> dict[str, Any]:
    from synthforge.training.sft import LoraSettingsError, SftConfig, score_responses, sft

    device, batch_size = _runtime(ctx, params)
    config = SftConfig(
        epochs=params.epochs, learning_rate=params.learning_rate, train_batch_size=params.train_batch_size,
        warmup_ratio=params.warmup_ratio, weight_decay=params.weight_decay, max_length=params.max_length,
        lora_rank=params.sft_setting("lora_rank"), lora_alpha=params.sft_setting("lora_alpha"),
        lora_dropout=params.sft_setting("lora_dropout"), lora_targets=tuple(params.lora_targets) if params.lora_targets else None,
    )
    ctx.log(f"train: sft seed {seed} on {device} ({number + 1}/{count})")
    start = time.perf_counter()
    try:
        result = sft(*records["train"], folder, config, seed=seed, device=device, show_progress=ctx.runtime.progress, log=ctx.log)
    except LoraSettingsError as exc:
        raise UserError(f"LoRA settings refused: {exc}", field="lora_targets") from None
    train_seconds = time.perf_counter() - start
    scored = score_responses(result.model, result.tokenizer, *records["test"], device=device, batch_size=batch_size,
                             max_length=config.max_length, answers=records["test"][1] if labels is not None else None)
    saved = _save_adapter(ctx, params, result, seed, number)
    info = {"train_seconds": train_seconds, "epochs_run": result.epochs_run, "history": result.history, "model_dir": saved}
    return {"seed": seed, "nll": scored.nll, "tokens": scored.tokens, "generated": scored.generated, "info": info}


def _save_adapter(ctx: StepContext, params: TrainParams, result, seed: int, number: int) -> str | None:
    if params.save_models == "none" or (params.save_models == "first" and number > 0):
        return None
    name = "adapter" if params.save_models == "first" else f"adapter-seed{seed}"
    result.model.save_pretrained(ctx.artifacts / name)  # a peft model saves its LoRA weights and config only
    return f"artifacts/{name}"


def _answers(generated: list[str], labels: list[str]) -> list[str]:
    """Each greedy answer as the label it matches (normalized), else as generated."""
    from synthforge.training.sft import normalize_answer

    by_form = {normalize_answer(label): label for label in labels}
    return [by_form.get(normalize_answer(text), text) for text in generated]


def _exact_match(truth: list[str], runs: list[dict[str, Any]], labels: list[str], params: TrainParams, seed: int,
                 per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Exact match with its intervals: accuracy over the labels plus one class for any other answer."""
    import numpy as np

    from synthforge.training.scoring import summarize

    classes = [*labels, OTHER_ANSWER]
    index = {label: i for i, label in enumerate(labels)}
    targets = np.array([index[t] for t in truth], dtype=np.int64)
    predicted = [np.array([index.get(a, len(labels)) for a in _answers(r["generated"], labels)], dtype=np.int64) for r in runs]
    summary = summarize(targets, predicted, classes, resamples=params.bootstrap, confidence=params.confidence, seed=seed)
    for row, scores in zip(per_seed, summary["per_seed_scores"]):
        row["exact_match"] = scores["accuracy"]
    return summary["scores"]["accuracy"]


def sft_score_line(scores: dict[str, Any]) -> str:
    """'train: perplexity 3.21 (seeds-t ci 3.05-3.40), response loss 1.1663, exact match 0.7400'."""
    ppl = scores["perplexity"]
    interval = f"{ppl['ci_method']} ci {ppl['ci'][0]:.4f}-{ppl['ci'][1]:.4f}" if ppl.get("ci") else "no interval"
    line = f"train: perplexity {ppl['mean']:.4f} ({interval}), response loss {scores['response_loss']['mean']:.4f}"
    return line + (f", exact match {scores['exact_match']['mean']:.4f}" if "exact_match" in scores else "")


def _sft_predictions(test, run: dict[str, Any], responses: list[str], labels: list[str] | None):
    import polars as pl

    answers = _answers(run["generated"], labels) if labels is not None else [None] * test.height
    return pl.DataFrame(
        {
            "seed": [run["seed"]] * test.height,
            "id": test["id"].cast(pl.String),
            "label": responses if labels is not None else [None] * test.height,
            "prediction": answers,
            "correct": [a == r for a, r in zip(answers, responses)] if labels is not None else [None] * test.height,
            "response_nll": run["nll"].astype("float64"),
            "response_tokens": run["tokens"].astype("int64"),
        },
        schema_overrides={"seed": pl.Int64, "label": pl.String, "prediction": pl.String, "correct": pl.Boolean},
    )


# -- outputs -----------------------------------------------------------------
def _predictions(test, run: dict[str, Any], labels: list[str]):
    import polars as pl

    probs = run["probs"]
    predicted = [labels[i] for i in run["pred"]]
    return pl.DataFrame(
        {
            "seed": [run["seed"]] * test.height,
            "id": test["id"].cast(pl.String),
            "label": test["label"].cast(pl.String),
            "prediction": predicted,
            "confidence": probs.max(axis=1).astype("float32"),
            "correct": [p == t for p, t in zip(predicted, test["label"].cast(pl.String).to_list())],
        },
        schema_overrides={"seed": pl.Int64},
    )


def score_line(scores: dict[str, Any]) -> str:
    """'train: accuracy 0.8125 (95% bootstrap ci 0.7550-0.8650), macro-F1 0.8011': intervals rounded like the means."""
    acc = scores["accuracy"]
    interval = f"{acc['ci_method']} ci {acc['ci'][0]:.4f}-{acc['ci'][1]:.4f}" if acc.get("ci") else "no interval"
    return f"train: accuracy {acc['mean']:.4f} ({interval}), macro-F1 {scores['macro_f1']['mean']:.4f}"


def _seed_table(per_seed: list[dict[str, Any]]):
    import polars as pl

    # No wall times here (they are in meta.per_seed): a table holds only what the key determines.
    columns = {"seed": pl.Int64, "accuracy": pl.Float64, "macro_f1": pl.Float64, "exact_match": pl.Float64,
               "response_loss": pl.Float64, "perplexity": pl.Float64,
               "epochs_run": pl.Int64, "best_epoch": pl.Int64, "iterations": pl.Int64}
    present = {name: dtype for name, dtype in columns.items() if any(name in row for row in per_seed)}
    return pl.DataFrame([{name: row.get(name) for name in present} for row in per_seed], schema=present)


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays to plain Python (manifest meta must be JSON)."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
