"""Malformed recipes, data files and CLI arguments: each gives exactly one known line on stderr and exit 2.

Table-driven: every case names the files it writes (in an empty folder, the working directory), the
command it runs and the exact last line of stderr (`<TMP>` stands for that folder, `<KEY>` for a cache
key). Nothing here builds more than a small CSV.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest
from click.testing import CliRunner

from synthforge.cli import main

CSV = "review,stars\n" + "".join(f"review {i}: the plot was {s},{s}\n" for i in range(30) for s in ["good", "bad", "meh"][i % 3:i % 3 + 1])
HEAD = "name: bad\nseed: 1\n"
LOAD = "  rows:\n    kind: load\n    path: reviews.csv\n    text_column: review\n    label_column: stars\n"
SPLIT = "  split:\n    kind: split\n    input: rows\n"
OPENAI = "{type: openai, base_url: 'http://127.0.0.1:9/v1', model: m}"


def gen(extra: str = "", template: str = "'Write a {{ label }} review about {{ topic }}.'", n: int = 4) -> str:
    return (f"  gen:\n    kind: generate\n    n: {n}\n    labels: [good, bad]\n    variables: {{topic: [plot, cast]}}\n"
            f"    template: {template}\n    backend: {OPENAI}\n{extra}")


BOMB = "name: bomb\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8)
).replace("*a", '"lol"') + "steps:\n" + LOAD


@dataclass
class Case:
    id: str
    args: list[str]
    message: str
    files: dict[str, str | bytes] = field(default_factory=dict)
    code: int = 2


def recipe(text: str, *args: str, command: str = "plan", message: str, id: str, **files: str | bytes) -> Case:
    return Case(id, [command, "r.yaml", *args], message, {"r.yaml": text, "reviews.csv": CSV, **files})


CASES = [
    # -- recipe structure ------------------------------------------------------------------------------
    recipe(HEAD + "steps:\n  rows: [kind: load\n", id="yaml-syntax", message="r.yaml:4: YAML syntax error: did not find expected ',' or ']' (check indentation, colons and quotes on this line or the one above)"),
    recipe(HEAD + "steps:\n\trows:\n", id="yaml-tab", message="r.yaml:4: YAML syntax error: found character that cannot start any token (check indentation, colons and quotes on this line or the one above)"),
    recipe("- just\n- a list\n", id="not-a-mapping", message="r.yaml:1: a recipe must be a YAML mapping (start with 'name:' and 'steps:')"),
    recipe("", id="empty-file", message="r.yaml:1: a recipe must be a YAML mapping (start with 'name:' and 'steps:')"),
    recipe(HEAD, id="missing-steps", message="r.yaml:1: steps: required field is missing (expected a mapping of step names to step configs, each with a 'kind')"),
    recipe(HEAD + "stepz: {}\nsteps:\n" + LOAD, id="unknown-top-field", message="r.yaml:3: stepz: unknown field 'stepz' (did you mean 'steps'?)"),
    recipe("name: bad\nseed: lots\nsteps:\n" + LOAD, id="seed-not-int", message="r.yaml:2: seed: seed must be a valid integer or a ${var} placeholder (got 'lots') (expected an integer seed (0 to 2^31 - 1), or a `${var}` placeholder resolved per variant; it enters every seeded step's key)"),
    recipe(HEAD + "steps:\n  rows:\n    kind: lod\n", id="unknown-kind", message="r.yaml:5: steps.rows.kind: unknown step kind 'lod' (did you mean 'load'?)"),
    recipe(HEAD + "steps:\n  rows:\n    path: reviews.csv\n", id="missing-kind", message="r.yaml:4: steps.rows: missing 'kind' (add e.g. 'kind: load' (kinds: load, split, generate, judge, embed, select, mix, train))"),
    recipe(HEAD + "steps:\n  rows: 3\n", id="step-not-mapping", message="r.yaml:4: steps.rows: Input should be a valid dictionary (got 3) (expected a mapping of step names to step configs, each with a 'kind')"),
    recipe(HEAD + "steps:\n" + LOAD + "    lables: [good]\n", id="unknown-step-field", message="r.yaml:9: steps.rows.lables: unknown field 'lables' (did you mean 'labels'?)"),
    recipe(HEAD + "steps:\n" + LOAD + "    dedup: maybe\n", id="wrong-type", message="r.yaml:9: steps.rows.dedup: Input should be a valid boolean, unable to interpret input (got 'maybe') (expected drop rows whose text repeats (keeps the first))"),
    recipe(HEAD + "steps:\n" + LOAD + "    format: xls\n", id="bad-literal", message="r.yaml:9: steps.rows.format: Input should be 'auto', 'csv', 'tsv', 'jsonl', 'json' or 'parquet' (got 'xls') (expected the file format: csv, tsv, jsonl, json, parquet, or auto to use the suffix)"),
    recipe(HEAD + "steps:\n" + LOAD + "  split:\n    kind: split\n", id="missing-required", message="r.yaml:9: steps.split.input: required field is missing (expected the step whose rows to split)"),
    recipe(HEAD + "steps:\n" + LOAD + "  split:\n    kind: split\n    input: rws\n", id="unknown-input", message="r.yaml:11: steps.split.input: unknown input step 'rws' (did you mean 'rows'?)"),
    recipe(HEAD + "steps:\n" + LOAD + "  split:\n    kind: split\n    input: rows.tran\n", id="unknown-table", message="r.yaml:11: steps.split.input: step 'rows' has no table 'tran' ('load' has tables: data)"),
    recipe(HEAD + "steps:\n" + LOAD + "  split:\n    kind: split\n    input: split\n", id="self-input", message="r.yaml:11: steps.split.input: a step cannot read its own output (name an earlier step)"),
    recipe(HEAD + "steps:\n  a:\n    kind: split\n    input: b\n  b:\n    kind: split\n    input: a\n", id="cycle", message="r.yaml:4: steps.a: steps form a cycle: a -> b -> a (a step may only read steps that do not (indirectly) read it)"),
    recipe(HEAD + "steps:\n  my.rows:\n    kind: load\n", id="bad-step-name", message="r.yaml:3: steps: 'my.rows' is not a valid step name (letters, digits, '_' or '-', no dots) (expected a mapping of step names to step configs, each with a 'kind')"),
    recipe(HEAD + "steps:\n" + LOAD + LOAD, id="duplicate-key", message="r.yaml:9: steps.rows: duplicate key 'rows' (each key may appear once in a mapping; remove or rename one)"),
    recipe(HEAD + "steps:\n" + LOAD + "    dataset: bbc_news\n", id="both-sources", message="r.yaml:4: steps.rows: give exactly one of 'dataset' (packaged) or 'path' (a file)"),
    recipe(HEAD + "steps:\n  rows:\n    kind: load\n    path: nope.csv\n", id="missing-file", message="r.yaml:6: steps.rows.path: file not found: nope.csv (paths are relative to the recipe's folder (<TMP>))"),
    # -- variables and matrix --------------------------------------------------------------------------
    recipe(HEAD + "vars:\n  k: 3\nsteps:\n" + LOAD + SPLIT + "    train_per_label: ${kk}\n", id="unknown-var", message="r.yaml:14: steps.split.train_per_label: unknown variable '${kk}' (did you mean 'k'?)"),
    recipe(HEAD + "steps:\n" + LOAD + SPLIT + "    test: ${}\n", id="empty-placeholder", message="r.yaml:12: steps.split.test: empty placeholder '${}' (write ${name} with a variable from vars: or matrix:)"),
    recipe(HEAD + "vars:\n  k: many\nsteps:\n" + LOAD + SPLIT + "    train_per_label: ${k}\n", id="var-wrong-type", message="r.yaml:14: steps.split.train_per_label: Input should be a valid integer, unable to parse string as an integer (got 'many') (expected a positive integer k: scarce labels, k training rows per label)"),
    recipe(HEAD + "vars:\n  2k: 3\nsteps:\n" + LOAD, id="bad-var-name", message="r.yaml:3: vars: '2k' is not a valid variable name (letters, digits, underscore) (expected a mapping of variable names to default values)"),
    recipe(HEAD + "matrix:\n  k: []\nsteps:\n" + LOAD, id="empty-matrix", message="r.yaml:3: matrix: matrix variable 'k' has no values (expected a mapping of variable names to lists of values, one variant per combination)"),
    recipe(HEAD + "vars:\n  per_label: 4\nmatrix:\n  per_lable: [2, 4]\nsteps:\n" + LOAD + SPLIT + "    train_per_label: ${per_label}\n",
           id="matrix-axis-unused", message="r.yaml:6: matrix.per_lable: matrix variable 'per_lable' is not used by any ${...} in the recipe (did you mean 'per_label'?)"),
    recipe(HEAD + "steps:\n" + LOAD + SPLIT + "    test: 1.5\n", id="fraction-out-of-range", message="r.yaml:12: steps.split.test: a fraction must be in [0, 1); write a count as an integer (got 1.5) (expected a count (an integer, e.g. 1000) or a fraction between 0 and 1 (e.g. 0.2))"),
    recipe(HEAD + "steps:\n" + LOAD + SPLIT + "    train_per_label: -2\n", id="negative-count", message="r.yaml:12: steps.split.train_per_label: Input should be greater than 0 (got -2) (expected a positive integer k: scarce labels, k training rows per label)"),
    # -- size limits -------------------------------------------------------------------------------------
    recipe(BOMB, id="alias-bomb", message="r.yaml:7: YAML expands to more than 100,000 values (through aliases *name) (an alias repeats a block: repeat fewer, or keep long lists in files)"),
    recipe(HEAD + "description: '" + "x" * 1_100_000 + "'\nsteps:\n" + LOAD, id="oversized-recipe", message="r.yaml: recipe is 1,100,134 characters, over the limit of 1,000,000 (keep long value lists in values files: variables: {NAME: {file: values.txt}})"),
    recipe(HEAD + "steps: " + "[" * 100 + "]" * 100 + "\n", id="nested-too-deep", message="r.yaml:3: YAML nests deeper than 64 levels (simplify the structure)"),
    recipe(HEAD + "matrix:\n" + "".join(f"  {v}: [{', '.join(map(str, range(30)))}]\n" for v in "abc") + "steps:\n" + LOAD
           + SPLIT + "    train_per_label: ${a}\n    test: ${b}\n    validation: ${c}\n", id="matrix-too-large",
           message="r.yaml:3: matrix: the matrix makes 27,000 variants (30 x 30 x 30), over the limit of 10,000 (fewer values per variable, or split the study)"),
    recipe(HEAD + "vars: &v\n  self: *v\nsteps:\n" + LOAD, id="recursive-alias", message="r.yaml:3: YAML refers to itself through an alias (simplify the structure)"),
    # -- labels ----------------------------------------------------------------------------------------------
    recipe(HEAD + "steps:\n" + LOAD + "    labels: 5\n", id="labels-not-a-list", message="r.yaml:9: steps.rows.labels: Input should be a valid list (got 5) (expected labels to keep (a list), or a mapping from old to new label names (keeps only those))"),
    recipe(HEAD + "steps:\n" + LOAD + "    labels: {good: }\n", id="label-without-new-name", message="r.yaml:9: steps.rows.labels.good: Input should be a valid string (got None) (expected labels to keep (a list), or a mapping from old to new label names (keeps only those))"),
    recipe(HEAD + "steps:\n" + LOAD + "    labels: [yes, no]\n", id="boolean-label",
           message="r.yaml:9: steps.rows.labels: YAML reads an unquoted yes/no/true/false/on/off as True: quote the label, e.g. 'yes' (expected labels to keep (a list), or a mapping from old to new label names (keeps only those))"),
    recipe(HEAD + "steps:\n" + LOAD + "    labels: {5: positive}\n", command="build", id="numeric-label-absent", message="r.yaml:9: steps.rows.labels: label '5' does not occur in the data (labels in the data: bad, good, meh)"),
    recipe(HEAD + "steps:\n" + LOAD + "    labels: [god]\n", command="build", id="unknown-label", message="r.yaml:9: steps.rows.labels: label 'god' does not occur in the data (did you mean 'good'?)"),
    # -- generate: templates, backend, limits ------------------------------------------------------------------
    recipe(HEAD + "steps:\n" + gen(template="'{% if %}'"), id="template-syntax", message="r.yaml:9: steps.gen.template: template syntax error on line 1: Expected an expression, got 'end of statement block'"),
    recipe(HEAD + "steps:\n" + gen(template="'About {{ topik }}.'"), id="template-unknown-variable", message="r.yaml:9: steps.gen.template: template uses 'topik', which this step does not provide (did you mean 'topic'?)"),
    recipe(HEAD + "steps:\n" + gen("    system: 'You are {{ persona }}.'\n"), id="system-unknown-variable", message="r.yaml:11: steps.gen.system: template uses 'persona', which this step does not provide (this template gets: examples, label, label_description, labels, topic)"),
    recipe(HEAD + "steps:\n" + LOAD + gen("    few_shot_from: rows\n    paraphrase: {fraction: 0.5, source: few_shot, template: 'Say {{ text }} about {{ topic }}'}\n"),
           id="paraphrase-variable-not-provided", message="r.yaml:17: steps.gen.paraphrase.template: template uses 'topic', which this step does not provide (this template gets: label, label_description, labels, text)"),
    recipe(HEAD + "steps:\n" + gen().replace("http://", "http://me:pa55w0rd@"), id="base-url-credentials", message="r.yaml:10: steps.gen.backend.base_url: credentials in base_url are refused (remove user:password@ and name the variable holding the key in api_key_env)"),
    recipe(HEAD + "steps:\n" + gen().replace("http://127.0.0.1:9/v1", "127.0.0.1:9"), id="base-url-no-scheme", message="r.yaml:10: steps.gen.backend.base_url: base_url must be an http(s) URL, got '127.0.0.1:9' (e.g. http://127.0.0.1:8000/v1)"),
    recipe(HEAD + "steps:\n" + gen().replace("model: m}", "model: m, api_key_env: sk-live-abcdef0123456789}"), id="key-as-variable-name",
           message="r.yaml:10: steps.gen.backend.api_key_env: api_key_env must be the NAME of an environment variable, not a key (e.g. api_key_env: OPENAI_API_KEY)"),
    # a field inside the backend union gets its own member's description and known fields, not the first member's
    recipe(HEAD + "steps:\n" + gen().replace("model: m}", "model: 5}"), id="openai-model-not-text",
           message="r.yaml:10: steps.gen.backend.model: Input should be a valid string (got 5) (expected the model name the server serves; it enters every response key with base_url)"),
    recipe(HEAD + "steps:\n" + gen().replace("model: m}", "model: m, batch_size: 4}"), id="openai-unknown-field",
           message="r.yaml:10: steps.gen.backend.batch_size: unknown field 'batch_size' (known fields: type, base_url, model, response_format, api_key_env, concurrency, timeout_s, max_retries, backoff_s, max_retry_after_s, endpoints)"),
    recipe(HEAD + "steps:\n" + gen().replace("model: m}", "model: m, endpoints: [{base_url: 'http://127.0.0.1:8/v1', concurrency: 0}]}"), id="endpoint-concurrency",
           message="r.yaml:10: steps.gen.backend.endpoints.0.concurrency: Input should be greater than or equal to 1 (got 0) (expected the most requests in flight to this server (default: the backend's concurrency))"),
    recipe(HEAD + "steps:\n" + gen().replace("{topic: [plot, cast]}", "{topic: {file: 5}}"), id="values-file-not-text",
           message="r.yaml:8: steps.gen.variables.topic.file: Input should be a valid string (got 5) (expected a text file of values, one per line, relative to the recipe (blank lines and lines starting with # are skipped); its content enters the key)"),
    recipe(HEAD + "steps:\n" + gen(n=-1), id="negative-n", message="r.yaml:6: steps.gen.n: Input should be greater than or equal to 0 (got -1) (expected the number of rows to generate, a non-negative integer counted before hygiene rejects)"),
    recipe(HEAD + "steps:\n" + gen("    temperature: 3\n"), id="temperature-out-of-range", message="r.yaml:11: steps.gen.temperature: Input should be less than or equal to 2 (got 3) (expected the sampling temperature, 0..2, where 0 is greedy)"),
    recipe(HEAD + "steps:\n" + gen().replace("{topic: [plot, cast]}", "{topic: [plot], label: [x]}"), id="reserved-variable", message="r.yaml:8: steps.gen.variables: variable names ['label'] are reserved (they are output columns) (expected a mapping of variable names to lists of values or {file: path}; each row draws one value per variable (seeded), which becomes a column and a template variable)"),
    recipe(HEAD + "steps:\n" + gen(template="'{{ range(10**9) | list }}'"), command="build", id="template-range-overflow", message="r.yaml:9: steps.gen.template: unsafe template: a call argument over 200,000"),
    recipe(HEAD + "steps:\n" + gen(template="'{{ \"ab\" * 10**8 }}'"), command="build", id="template-repeat-bomb", message="r.yaml:9: steps.gen.template: unsafe template: '*' would build more than 200,000 items"),
    recipe(HEAD + "steps:\n" + gen(template="'{{ label | center(10**9) }}'"), command="build", id="template-filter-bomb",
           message="r.yaml:9: steps.gen.template: unsafe template: a filter argument over 200,000"),
    recipe(HEAD + "steps:\n" + gen(template="'{{ \"a\" * 150000 }}{{ \"b\" * 150000 }}'"), command="build", id="prompt-too-long",
           message="r.yaml:9: steps.gen.template: rendered prompt is longer than 200,000 characters (shorten the template, its variables or few_shot_k)"),
    recipe(HEAD + "steps:\n" + gen(template="'{{ 9 ** 9 ** 9 }}'"), id="template-power-tower",
           message="r.yaml:9: steps.gen.template: unsafe template on line 1: '**' result larger than 2^128"),
    recipe(HEAD + "steps:\n" + gen(template="'{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x'"),
           id="template-nested-literal-ranges", message="r.yaml:9: steps.gen.template: template on line 1: nested loops run "
           "10,000,000,000 times, over the budget of 5,000,000 operations per prompt (loop over fewer items (a prompt needs a few))"),
    recipe(HEAD + "steps:\n" + gen(template="'{% for i in range(100000) %}{% for c in label * 40000 %}{% endfor %}{% endfor %}x'"),
           command="build", id="template-nested-loops-cpu-bomb", message="r.yaml:9: steps.gen.template: template rendering took more "
           "than 5,000,000 operations (loop iterations, calls, repeated items) (loop over fewer items (a prompt needs a few))"),
    recipe(HEAD + "steps:\n" + gen(template="'{% set ns = namespace(x=3) %}{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}{% endfor %}'"),
           command="build", id="template-squaring-loop", message="r.yaml:9: steps.gen.template: unsafe template: '*' result larger than 2^128"),
    recipe(HEAD + "steps:\n" + gen(template="'{{ lipsum(199999) }}'"), command="build", id="template-lipsum-bomb",
           message="r.yaml:9: steps.gen.template: template rendering took more than 5,000,000 operations (loop iterations, calls, "
           "repeated items) (loop over fewer items (a prompt needs a few))"),
    recipe(HEAD + "steps:\n" + gen(template="'{{ 1 / 0 }}'"), command="build", id="template-division-by-zero", message="r.yaml:9: steps.gen.template: template error: ZeroDivisionError: division by zero"),
    # -- budget -----------------------------------------------------------------------------------------------------
    recipe(HEAD + "steps:\n" + gen(n=10**23), command="build", id="budget-requests", message="r.yaml:4: steps.gen: the build plans ~100,000,000,000,000,000,000,000 LLM requests (this step ~100,000,000,000,000,000,000,000), over the budget of 100,000 (lower n, or raise budget.max_requests in the recipe or --max-requests on the command line)"),
    recipe(HEAD + "steps:\n" + gen(n=500), "--max-tokens", "1000", command="build", id="budget-tokens-cli", message="r.yaml:4: steps.gen: the build plans ~74,500 LLM tokens (this step ~74,500), over the budget of 1,000 (lower n, or raise budget.max_tokens in the recipe or --max-tokens on the command line)"),
    recipe(HEAD + "budget: {max_requests: 2}\nsteps:\n" + gen(), command="build", id="budget-requests-recipe", message="r.yaml:5: steps.gen: the build plans ~4 LLM requests (this step ~4), over the budget of 2 (lower n, or raise budget.max_requests in the recipe or --max-requests on the command line)"),
    recipe(HEAD + "budget: {max_request: 2}\nsteps:\n" + gen(), id="budget-unknown-field", message="r.yaml:3: budget.max_request: unknown field 'max_request' (did you mean 'max_requests'?)"),
    # -- data files ----------------------------------------------------------------------------------------------------
    recipe(HEAD + "steps:\n" + LOAD, command="build", id="not-utf8", message="r.yaml:4: steps.rows.encoding: reviews.csv line 2 is not UTF-8 text (byte 0xe8) (set encoding: on the load step, e.g. encoding: latin-1 or encoding: cp1252)",
           **{"reviews.csv": "review,stars\nun film très réussi,good\n".encode("latin-1")}),
    recipe(HEAD + "steps:\n" + LOAD + "    encoding: ascii\n", command="build", id="wrong-encoding", message="r.yaml:9: steps.rows.encoding: reviews.csv line 2 is not ascii text (byte 0xe8) (set the file's real encoding)",
           **{"reviews.csv": "review,stars\nun film très réussi,good\n".encode("latin-1")}),
    recipe(HEAD + "steps:\n" + LOAD + "    encoding: latin-2x\n", id="unknown-encoding", message="r.yaml:9: steps.rows.encoding: unknown encoding 'latin-2x' (e.g. utf-8, latin-1, cp1252, utf-16)"),
    recipe(HEAD + "steps:\n" + LOAD, command="build", id="header-only", message="r.yaml:6: steps.rows.path: the data has no rows (check the file: it holds a header or nothing)", **{"reviews.csv": "review,stars\n"}),
    recipe(HEAD + "steps:\n" + LOAD, command="build", id="zero-byte-file", message="r.yaml:6: steps.rows.path: cannot read reviews.csv as csv: empty CSV (check the file or set format:)", **{"reviews.csv": ""}),
    recipe(HEAD + "steps:\n" + LOAD, command="build", id="all-texts-blank", message="r.yaml:7: steps.rows.text_column: no rows left (dropped 3 blank text) (check text_column and label_column)",
           **{"reviews.csv": 'review,stars\n"  ",good\n"",bad\n" ",meh\n'}),
    recipe(HEAD + "steps:\n  rows:\n    kind: load\n    path: reviews.csv\n", command="build", id="unknown-column", message="r.yaml:4: steps.rows.text_column: no column 'text' in the data (set text_column; columns in the data: review, stars)"),
    recipe(HEAD + "steps:\n  rows:\n    kind: load\n    path: reviews.txt\n", command="build", id="unknown-format", message="r.yaml:4: steps.rows.format: cannot tell the format of reviews.txt (set format: csv|tsv|jsonl|json|parquet)",
           **{"reviews.txt": "hello\n"}),
    recipe(HEAD + "steps:\n  rows:\n    kind: load\n    path: rows.jsonl\n", command="build", id="broken-jsonl", message="r.yaml:6: steps.rows.path: cannot read rows.jsonl as jsonl: Syntax at character 21 (':') (check the file or set format:)",
           **{"rows.jsonl": '{"text": "a", "label": "x"}\n{"text": "b", "label":\n'}),
    recipe(HEAD + "steps:\n" + LOAD + SPLIT + "    test: 5000\n", command="build", id="too-many-test-rows", message="r.yaml:12: steps.split.test: needs 5000 rows but only 30 are left (ask for fewer rows)"),
    # -- command-line arguments ----------------------------------------------------------------------------------------
    recipe(HEAD + "vars:\n  per_label: 4\nsteps:\n" + LOAD + SPLIT + "    train_per_label: ${per_label}\n", "--set", "per_lable=3",
           id="set-unknown-variable", message="r.yaml: --set per_lable: no variable 'per_lable' in the recipe (did you mean 'per_label'?)"),
    recipe(HEAD + "steps:\n" + LOAD, "--set", "seed=abc", id="set-seed-not-int", message="r.yaml: --set seed: the seed must be an integer from 0 to 2147483647, got 'abc' (e.g. --set seed=7)"),
    recipe(HEAD + "steps:\n" + LOAD, "--set", "seed=-5", id="set-seed-negative", message="r.yaml: --set seed: the seed must be an integer from 0 to 2147483647, got -5 (e.g. --set seed=7)"),
    recipe(HEAD + "steps:\n" + LOAD, "--set", "novalue", id="set-without-value", message="--set expects name=value, got 'novalue' (e.g. --set per_label=32)"),
    recipe(HEAD + "steps:\n" + LOAD, "--only", "rowz", id="only-unknown-step", message="no step 'rowz' in r.yaml (did you mean 'rows'?)"),
    recipe(HEAD + "steps:\n" + LOAD, "--force", "row", command="build", id="force-unknown-step", message="no step 'row' in r.yaml (did you mean 'rows'?)"),
    recipe(HEAD + "steps:\n" + LOAD, "rowz", command="show", id="show-unknown-step", message="no step 'rowz' in r.yaml (did you mean 'rows'?)"),
    recipe(HEAD + "steps:\n" + LOAD, "rows", command="show", id="show-not-built", message="step 'rows' is not built yet (key <KEY>) (run: synthforge build r.yaml)"),
    recipe(HEAD + "matrix:\n  k: [1, 2]\nsteps:\n" + LOAD + SPLIT + "    train_per_label: ${k}\n", "split", "--variant", "k=3",
           command="show", id="show-unknown-variant", message="no variant 'k=3' (k is one of 1, 2)"),
    recipe(HEAD + "steps:\n" + LOAD, "rows", "--variant", "x", command="show", id="variant-without-matrix", message="no variant 'x' (the recipe has no matrix: its one variant is 'default')"),
    Case("recipe-not-found", ["plan", "absent.yaml"], "absent.yaml: recipe file not found (check the path)"),
    recipe(HEAD + "steps:\n" + LOAD, "r.yaml", "--fail-on", "accuracy drops", command="diff", id="gate-unreadable", message="--fail-on: cannot read gate 'accuracy drops' (write METRIC OP NUMBER[%], e.g. 'accuracy < -0.01', 'vendi < -5%', 'rows_removed > 100')"),
    recipe(HEAD + "steps:\n" + LOAD, "r.yaml", "--build", "--fail-on", "duplicats > 0", command="diff", id="gate-metric-typo",
           message="--fail-on: gate 'duplicats > 0' names metric 'duplicats', which occurs on neither side (did you mean 'duplicates'?)"),
    recipe(HEAD + "steps:\n" + LOAD, "r.yaml", "--fail-on", "accuracy < -0.01", command="diff", id="gate-nothing-built", message="--fail-on: gate 'accuracy < -0.01' names metric 'accuracy', which occurs on neither side (nothing is built on either side: add --build)"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_input_gives_one_exact_line(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SYNTHFORGE_CACHE", str(tmp_path / "cache"))
    for name, content in case.files.items():
        (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    result = CliRunner().invoke(main, case.args, catch_exceptions=False)
    expected = "error: " + case.message.replace("<TMP>", str(tmp_path.resolve()))
    stderr = re.sub(r"\bkey [0-9a-f]{12}\b", "key <KEY>", result.stderr)  # keys change with code versions
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert (result.exit_code, errors) == (case.code, [expected]), result.output
    assert stderr.rstrip("\n").splitlines()[-1] == expected
    assert "Traceback" not in result.output and ".list[" not in result.stderr


def test_the_suite_is_large_and_its_ids_unique():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)
