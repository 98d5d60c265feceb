"""The transformers backend on a tiny local GPT-2: batching, per-row seeds, determinism, model identity."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from synthforge.backends.llm import GenerationRequest
from synthforge.backends import transformers_llm
from synthforge.backends.transformers_llm import SeededSampler, TransformersLLM, ensure_smollm2, row_uniforms
from synthforge.steps.generate import GenerateStep
from tests.generate_helpers import run_step
from tests.tiny_models import tiny_chat_model_dir

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_model() -> Path:
    return tiny_chat_model_dir()


def request(prompt: str, seed: int, temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 10):
    return GenerationRequest((("user", prompt),), temperature, top_p, max_new_tokens, seed)


def tiny_params(model: Path, n: int, **overrides):
    return {
        "n": n,
        "labels": ["positive", "negative"],
        "variables": {"topic": ["food", "music", "travel"]},
        "template": "write a {{ label }} review about {{ topic }}",
        "max_new_tokens": 8,
        "temperature": 1.0,
        "backend": {"type": "transformers", "model": str(model), "batch_size": 4},
        "hygiene": {"dedupe": False, "min_chars": 0},
        **overrides,
    }


def test_a_row_does_not_depend_on_its_batch(tiny_model):
    prompts = ["the movie was", "a delightful comedy with a warm heart and", "i loved", "the plot"]
    requests = [request(p, seed=100 + i) for i, p in enumerate(prompts)]
    together = TransformersLLM(str(tiny_model), batch_size=4).generate(requests)
    alone = TransformersLLM(str(tiny_model), batch_size=1).generate(requests)
    assert [r.text for r in together] == [r.text for r in alone]
    assert [r.completion_tokens for r in together] == [r.completion_tokens for r in alone]
    reordered = TransformersLLM(str(tiny_model), batch_size=4).generate(requests[::-1])
    assert [r.text for r in reordered] == [r.text for r in together][::-1]


def test_each_row_follows_its_own_seed(tiny_model):
    backend = TransformersLLM(str(tiny_model), batch_size=8)
    same_prompt = backend.generate([request("the movie was", seed=s, max_new_tokens=12) for s in range(8)])
    assert len({r.text for r in same_prompt}) >= 6  # distinct seeds sample distinct continuations
    again = backend.generate([request("the movie was", seed=s, max_new_tokens=12) for s in range(8)])
    assert [r.text for r in again] == [r.text for r in same_prompt]


def test_temperature_zero_and_tiny_top_p_are_greedy(tiny_model):
    backend = TransformersLLM(str(tiny_model), batch_size=2)
    tokenizer, model = backend.load()
    prompt = backend.prompt_text(tokenizer, request("the movie was", 0))
    encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    reference = model.generate(**encoded, max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.decode(reference[0, encoded["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    greedy = backend.generate([request("the movie was", seed=1, temperature=0.0),
                               request("the movie was", seed=2, top_p=1e-6)])
    assert [r.text for r in greedy] == [expected, expected]


def test_sampler_follows_the_distribution_within_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    counts = torch.zeros(4)
    for seed in range(2000):
        sampler = SeededSampler([1.0], [0.8], [seed], prompt_len=0, device="cpu")
        counts[sampler(torch.zeros(1, 3, dtype=torch.long), logits.clone()).argmax()] += 1
    assert counts[2] == 0 and counts[3] == 0  # outside the 0.8 nucleus
    assert abs(counts[0] / 2000 - 0.5 / 0.8) < 0.05 and abs(counts[1] / 2000 - 0.3 / 0.8) < 0.05


def test_row_uniforms_are_pure_and_spread():
    seeds = torch.arange(5000, dtype=torch.int64)
    first = row_uniforms(seeds, 3)
    assert torch.equal(first, row_uniforms(seeds, 3)) and not torch.equal(first, row_uniforms(seeds, 4))
    assert 0 < first.min() and first.max() < 1 and abs(first.mean().item() - 0.5) < 0.02


def test_step_with_the_transformers_backend(tmp_path, tiny_model):
    result = run_step(tmp_path, tiny_params(tiny_model, 6))
    data = result.data
    assert data.height + result.tables["rejects"].height == 6
    assert set(data["model"]) == {"tiny-gpt2"}
    assert result.meta["completion_tokens"] > 0 and result.meta["prompt_tokens"] > 6 * 5
    fresh = run_step(tmp_path / "fresh-cache", tiny_params(tiny_model, 6, batch_size=1))
    assert fresh.data.equals(data)  # same rows on rerun with an empty cache, whatever the batch size
    cached = run_step(tmp_path, tiny_params(tiny_model, 6))
    assert cached.meta["responses_cached"] == 6 and cached.data.equals(data)


def test_model_identity_follows_the_weights(tmp_path, tiny_model):
    copy = tmp_path / "tiny-gpt2"
    shutil.copytree(tiny_model, copy)
    from synthforge.backends.transformers_llm import identity_files

    files = identity_files(str(copy))
    assert copy / "model.safetensors" in files and copy / "config.json" in files
    step_identity = GenerateStep().identity(GenerateStep.Params.model_validate(tiny_params(copy, 1)))
    assert step_identity["backend"] == {"type": "transformers", **TransformersLLM(str(copy)).identity()}
    before = TransformersLLM(str(copy)).identity()
    state = {k: v.clone() for k, v in TransformersLLM(str(copy)).load()[1].state_dict().items()}
    from safetensors.torch import save_file

    state = {k: v + 1.0 if k.endswith("ln_f.bias") else v for k, v in state.items() if not k.startswith("lm_head")}
    save_file(state, str(copy / "model.safetensors"), metadata={"format": "pt"})
    assert TransformersLLM(str(copy)).identity() != before


def test_a_missing_model_folder_is_a_user_error(tmp_path):
    from synthforge.errors import UserError

    with pytest.raises(UserError) as caught:
        GenerateStep().identity(GenerateStep.Params.model_validate(tiny_params(tmp_path / "nope", 1)))
    assert caught.value.field == "backend.model" and "does not exist" in str(caught.value)


def test_smollm2_is_converted_once_atomically(tmp_path, monkeypatch):
    calls = []

    def fake_convert(gguf: Path, out: Path) -> None:
        calls.append(out)
        assert not (tmp_path / transformers_llm.SMOLLM2_DIRNAME).exists()  # appears only by rename
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(transformers_llm, "_convert_gguf", fake_convert)
    monkeypatch.setattr(transformers_llm, "smollm2_gguf_path", lambda: Path("unused.gguf"))
    results = []
    threads = [threading.Thread(target=lambda: results.append(ensure_smollm2(tmp_path, log=lambda m: None)))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len(set(results)) == 1
    assert (results[0] / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp dir left behind


def reference_nucleus_sample(logits, top_p: float, uniform: float) -> int:
    """The textbook way: full sort, keep the smallest prefix reaching top_p, inverse CDF."""
    values, order = torch.sort(logits, descending=True)
    probs = values.softmax(-1)
    cumulative = probs.cumsum(-1)
    kept = probs[(cumulative - probs) < top_p]
    target = uniform * kept.sum()
    return int(order[int(torch.searchsorted(kept.cumsum(-1), target.reshape(1)).clamp(max=len(kept) - 1))])


@pytest.mark.parametrize("sharpness", [0.5, 3.0, 8.0])  # flat to peaked: exercises every top-k escalation
def test_nucleus_by_top_k_matches_a_full_sort(sharpness):
    from synthforge.backends.transformers_llm import _sample_in_nucleus

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5000, generator=generator) * sharpness
    uniforms = torch.rand(6, 1, generator=generator)
    top_p = torch.full((6, 1), 0.9)
    ours = _sample_in_nucleus(logits, top_p, uniforms)[:, 0].tolist()
    assert ours == [reference_nucleus_sample(logits[i], 0.9, uniforms[i, 0]) for i in range(6)]


def test_an_interrupted_generation_resumes_and_matches_an_uninterrupted_one(tmp_path, tiny_model, monkeypatch):
    from synthforge.generation.response_cache import ResponseCache

    params = tiny_params(tiny_model, 6, batch_size=2)
    original_put = ResponseCache.put
    stored = []

    def put_then_die(self, key, response):
        if len(stored) == 3:
            raise KeyboardInterrupt  # the user hits Ctrl-C while row 4 arrives
        stored.append(key)
        original_put(self, key, response)

    monkeypatch.setattr(ResponseCache, "put", put_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_step(tmp_path / "interrupted", params)
    monkeypatch.setattr(ResponseCache, "put", original_put)
    resumed = run_step(tmp_path / "interrupted", params)
    assert resumed.meta["responses_cached"] == 3 and resumed.meta["responses_generated"] == 3
    uninterrupted = run_step(tmp_path / "clean", params)
    assert resumed.data.equals(uninterrupted.data)


def test_progress_moves_within_a_batch_and_counts_every_row_and_token(tiny_model):
    requests = [request(f"review {i}", seed=i, max_new_tokens=12) for i in range(8)]
    steps: list[tuple[int, int]] = []
    arrived: list[int] = []
    responses = TransformersLLM(str(tiny_model), batch_size=8).generate(
        requests, on_response=lambda i, r: arrived.append(i), on_tokens=lambda new, done: steps.append((new, done)))
    assert len(arrived) == 8
    # one report per decoding step of the single batch, not one per batch
    assert len(steps) > 2
    assert sum(new for new, _ in steps) == sum(r.completion_tokens for r in responses)
    assert sum(done for _, done in steps) == 8


def test_the_budget_cuts_a_batch_and_reports_what_was_decoded(tiny_model, tmp_path):
    from synthforge.backends.llm import BudgetSpent, RequestBudget

    budget = RequestBudget.create(tmp_path, max_requests=5, max_tokens=10**9)
    backend = TransformersLLM(str(tiny_model), batch_size=4)
    backend.use_budget(budget)
    answered: list[int] = []
    try:
        with pytest.raises(BudgetSpent, match="5 of 5 requests"):
            backend.generate([request(f"prompt {i}", i) for i in range(8)], on_response=lambda i, r: answered.append(i))
        assert len(answered) == 5 and budget.spent()[0] == 5  # one whole batch and one row of the next
    finally:
        budget.remove()
