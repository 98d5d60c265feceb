"""Records out: typed Hugging Face features, chat `messages` JSONL, and `diff` by record id with per-field changes."""

from __future__ import annotations

import json

import pytest

from tests.fake_openai_server import FakeOpenAIServer, reply_text

RECORDS = """
name: records
seed: 3
steps:
  qa:
    kind: generate
    n: 6
    labels: [easy, hard, unused]
    system: You write quiz material.
    backend: {type: openai, base_url: "BASE_URL", model: fake, backoff_s: 0.01}
    text: answer
    fields:
      subject: {sample: category, values: [maths, history, biology]}
      points: {sample: integer, low: 1, high: 5}
      level: {sample: category, file: levels.txt}
      question:
        template: "Write one {{ label }} {{ subject }} question worth {{ points }} points."
      answer:
        template: "ANSWER_TEMPLATE"
      review:
        template: "Grade: {{ answer }}"
        json_fields: {correct: bool, score: int, tags: "list[str]", verdict: [keep, drop]}
      steps:
        template: "Steps for: {{ question }}"
        json_schema:
          type: object
          additionalProperties: false
          required: [items]
          properties:
            items:
              type: array
              items:
                type: object
                additionalProperties: false
                required: [kind, cost]
                properties:
                  kind: {type: string, enum: [think, write], description: what the step does}
                  cost: {type: number}
      notes:
        template: "Notes on {{ question }}"
        json_schema: {type: object, properties: {a: {type: string}}}
"""


def reply(messages, seed):
    last = messages[-1]["content"]
    if last.startswith("Grade"):
        return json.dumps({"correct": seed % 2 == 0, "score": seed % 7, "tags": ["t", str(seed)],
                           "verdict": "keep" if seed % 3 else "drop"})
    if last.startswith("Steps"):
        return json.dumps({"items": [{"kind": "think", "cost": seed + 0.5}, {"kind": "write", "cost": seed}][: 1 + seed % 2]})
    if last.startswith("Notes"):
        return json.dumps({"a": "x", "extra": seed})  # allowed: the schema is open
    return reply_text(messages, seed)


@pytest.fixture(scope="module")
def server():
    with FakeOpenAIServer(latency_s=0.0) as fake:
        fake.reply = reply
        yield fake


@pytest.fixture
def records(cli, write_recipe, server):
    def write(answer: str = "Answer briefly: {{ question }}", name: str = "records.yaml", n: int = 6):
        text = RECORDS.replace("BASE_URL", server.base_url).replace("ANSWER_TEMPLATE", answer).replace("n: 6", f"n: {n}")
        path = write_recipe(text, name)
        (path.parent / "levels.txt").write_text("# levels\nintro\nadvanced\n")
        result = cli("build", path, "--no-progress")
        assert result.exit_code == 0, result.output
        return path

    return write


def one_line_error(result) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


# -- Hugging Face features --------------------------------------------------------------------------
def test_hf_export_types_record_fields_and_round_trips_through_datasets(cli, records, tmp_path):
    import datasets
    import polars as pl

    from synthforge import api

    path = records()
    out = tmp_path / "hf"
    result = cli("export", path, "qa", "--format", "hf", "--to", out)
    assert result.exit_code == 0, result.output
    stored = api.open(path).table("qa")
    from_files = datasets.load_dataset("arrow", data_files=str(out / "data-*.arrow"), split="train")  # as the Hub reads it
    for loaded in (datasets.load_from_disk(str(out)), from_files):
        features = loaded.features
        assert features["label"] == datasets.ClassLabel(names=["easy", "hard", "unused"])  # the recipe's label set
        assert features["subject"] == datasets.ClassLabel(names=["maths", "history", "biology"])  # declared order
        assert features["points"] == datasets.Value("int64")
        assert features["level"] == datasets.ClassLabel(names=["intro", "advanced"])  # a values file's, in its order
        review = features["review"]
        assert review["correct"] == datasets.Value("bool") and review["score"] == datasets.Value("int64")
        assert review["tags"] == datasets.List(datasets.Value("string"))
        assert review["verdict"] == datasets.ClassLabel(names=["keep", "drop"])
        item = features["steps"]["items"].feature
        assert item["kind"] == datasets.ClassLabel(names=["think", "write"]) and item["cost"] == datasets.Value("float64")
        assert features["notes"].dtype in ("string", "large_string")  # an open object keeps its JSON text
        assert len(loaded) == stored.height == 6
        for row, original in zip(loaded, stored.iter_rows(named=True)):
            parsed = json.loads(original["review"])
            names = review["verdict"].names
            assert {**row["review"], "verdict": names[row["review"]["verdict"]]} == parsed
            kinds = item["kind"].names
            assert [{**s, "kind": kinds[s["kind"]]} for s in row["steps"]["items"]] == json.loads(original["steps"])["items"]
            assert features["subject"].int2str(row["subject"]) == original["subject"]
            assert features["label"].int2str(row["label"]) == original["label"]
            assert row["notes"] == original["notes"] and row["answer"] == original["answer"]
    assert stored.schema["review"] == pl.String  # the cache keeps the JSON text


def test_the_card_names_every_feature_and_carries_them_in_its_yaml(cli, records, tmp_path):
    import yaml

    path = records()
    cli("export", path, "qa", "--format", "hf", "--to", tmp_path / "hf")
    card = (tmp_path / "hf" / "README.md").read_text()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    import datasets

    declared = yaml.safe_load(front)["dataset_info"]["features"]
    assert datasets.Features._from_yaml_list(declared) == datasets.load_from_disk(str(tmp_path / "hf")).features
    features = {f["name"]: f for f in declared}
    assert features["review"]["struct"][3] == {"name": "verdict", "dtype": {"class_label": {"names": {"0": "keep", "1": "drop"}}}}
    assert features["subject"]["dtype"] == {"class_label": {"names": {"0": "maths", "1": "history", "2": "biology"}}}
    assert "## Features" in body
    for row in ("| review.verdict | class label (keep, drop) |", "| review.tags[] | string |",
                "| steps.items[].kind | class label (think, write) | what the step does |",
                "| subject | class label (maths, history, biology) | sampled (category) field of step `qa` |",
                "| review | dict | structured (JSON Schema) field of step `qa` |", "| id | large_string | stable row id",
                "| points | int64 | sampled (integer) field of step `qa` |", "| question | large_string | generated field of step `qa` |"):
        assert row in body, row
    assert "kept as JSON text: the schema: an object open to other keys" in body


def test_unmappable_schemas_keep_their_json_text_and_say_why():
    from synthforge.record_features import Unmapped, schema_shape

    closed = {"type": "object", "additionalProperties": False, "properties": {"a": {"$ref": "#/$defs/n"}},
              "$defs": {"n": {"type": ["integer", "null"]}}}
    assert schema_shape(closed).fields["a"].dtype == "int64"  # a local $ref, a nullable type
    for schema, why in (({"anyOf": [{"type": "string"}, {"type": "integer"}]}, "'anyOf' may mix shapes"),
                        ({"type": "array"}, "an array without one `items` schema"),
                        ({"enum": ["a", 1]}, "an enum of mixed or non-scalar values"),
                        ({"type": ["string", "integer"]}, "is not one of"),
                        ({"$ref": "#", "type": "object"}, "recursive $ref")):
        with pytest.raises(Unmapped, match=why.replace("$", r"\$").replace("[", r"\[")):
            schema_shape(schema)


def test_stored_values_that_do_not_fit_their_schema_are_a_one_line_error_not_a_wrong_dataset(tmp_path):
    import polars as pl

    from synthforge.errors import UserError
    from synthforge.export import write_hf_folder
    from synthforge.record_features import Column, schema_shape

    shape = schema_shape({"type": "object", "additionalProperties": False, "properties": {"score": {"type": "integer"}}})
    rows = pl.LazyFrame({"id": ["a", "b"], "review": ['{"score": 1}', '{"score": "high"}']})
    with pytest.raises(UserError, match=r"the record columns \(review\) do not fit their declared types"):
        write_hf_folder({None: rows}, tmp_path / "hf", {"label_counts": {}}, {"review": Column(shape, "x", structured=True)})
    assert not (tmp_path / "hf").exists()


# -- chat messages ----------------------------------------------------------------------------------
def test_messages_export_writes_openai_chat_rows(cli, records, tmp_path):
    from synthforge import api

    path = records()
    out = tmp_path / "sft.jsonl"
    result = cli("export", path, "qa", "--format", "messages", "--prompt", "question", "--response", "answer",
                 "--to", out)
    assert result.exit_code == 0, result.output
    assert "wrote 6 chats" in result.output
    stored = api.open(path).table("qa")
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 6
    for line, row in zip(lines, stored.iter_rows(named=True)):
        assert list(line) == ["messages"]
        assert line["messages"] == [{"role": "user", "content": row["question"]},
                                    {"role": "assistant", "content": row["answer"]}]
    with_system = cli("export", path, "qa", "--format", "messages", "--system", "subject", "--prompt", "question",
                      "--response", "review", "--to", out)
    assert with_system.exit_code == 0
    first = json.loads(out.read_text().splitlines()[0])["messages"]
    assert [m["role"] for m in first] == ["system", "user", "assistant"]
    assert first[0]["content"] == stored["subject"][0] and json.loads(first[2]["content"]) == json.loads(stored["review"][0])


def test_messages_rows_load_as_a_chat_dataset(cli, records, tmp_path):
    """What TRL's SFTTrainer reads: a `messages` column of role/content lists."""
    import datasets

    path = records()
    out = tmp_path / "sft.jsonl"
    cli("export", path, "qa", "--format", "messages", "--prompt", "question", "--response", "answer", "--to", out)
    loaded = datasets.load_dataset("json", data_files=str(out), split="train")
    assert loaded.column_names == ["messages"] and len(loaded) == 6
    assert loaded.features["messages"] == datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})


@pytest.mark.parametrize("args,needles", [
    (["--prompt", "qestion", "--response", "answer"], ["--prompt", "no column 'qestion'", "did you mean 'question'"]),
    (["--prompt", "question", "--response", "answer", "--system", "nope"], ["--system", "no column 'nope'"]),
    (["--prompt", "question"], ["--response", "--format messages needs --response COLUMN"]),
    (["--prompt", "question", "--response", "points"], None),
])
def test_messages_mistakes_are_one_located_line(cli, records, tmp_path, args, needles):
    path = records()
    result = cli("export", path, "qa", "--format", "messages", *args, "--to", tmp_path / "x.jsonl")
    if needles is None:  # a number is written out as text
        assert result.exit_code == 0, result.output
        return
    line = one_line_error(result)
    for needle in needles:
        assert needle in line, line
    assert not (tmp_path / "x.jsonl").exists()


def test_role_options_without_messages_and_rows_missing_a_turn_are_refused(cli, records, tmp_path, server):
    path = records()
    line = one_line_error(cli("export", path, "qa", "--prompt", "question", "--to", tmp_path / "x.parquet"))
    assert "--prompt applies to --format messages only" in line
    line = one_line_error(cli("export", path, "qa", "--format", "messages", "--prompt", "question", "--response",
                              "paraphrase_of", "--to", tmp_path / "x.jsonl"))  # null in every topic row
    assert "--response: 6 rows of qa's data table have no 'paraphrase_of' (first: id qa-0)" in line
    assert not (tmp_path / "x.jsonl").exists()


# -- diff by record id ------------------------------------------------------------------------------
def test_diff_reports_changed_records_with_their_fields(cli, records):
    a = records(name="a.yaml")
    b = records("Answer in one word: {{ question }}", name="b.yaml", n=8)  # two more rows, every answer new
    result = cli("diff", a, b, "--records", "2")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "rows: 6 -> 8 (+2 added, -0 removed, 6 changed)" in out
    assert "fields changed: answer 6, text 6" in out  # the question, samples and structured fields did not change
    assert out.count("    ~ qa-") == 2 and "    ... and 4 more changed records (--records N shows more)" in out
    assert "    + added ids: qa-6, qa-7" in out
    line = next(line for line in out.splitlines() if line.startswith("    ~ qa-0"))
    assert "Answer briefly:" in line and "Answer in one word:" in line and " -> " in line
    data = json.loads(cli("diff", a, b, "--format", "json", "--records", "3").output)
    found = next(s for s in data["steps"] if s["step"] == "qa")["outputs"]
    assert found["rows_changed"] == 6 and found["rows_added"] == 2
    records_ = found["records"]
    assert records_["fields_changed"] == {"answer": 6, "text": 6}
    assert [r["id"] for r in records_["changed"]] == ["qa-0", "qa-1", "qa-2"] and records_["more_changed"] == 3
    assert records_["added"] == ["qa-6", "qa-7"] and records_["removed"] == [] and records_["more_added"] == 0
    change = records_["changed"][0]["fields"]["answer"]
    assert "Answer briefly" in change["a"] and "one word" in change["b"] and len(change["a"]) <= 66
    markdown = cli("diff", a, b, "--format", "markdown", "--records", "1").output
    assert "| `qa-0` | `answer` |" in markdown and "Changed records (5 more not listed):" in markdown


def test_a_record_whose_structured_field_changed_names_only_that_field(tmp_path):
    import polars as pl

    from synthforge.cache import Entry
    from synthforge.record_diff import compare_records
    from tests.helpers import fixture_entry

    def entry(name: str, frame: pl.DataFrame) -> Entry:
        folder = fixture_entry(tmp_path / name, {"data": frame})
        return Entry(json.loads((folder / "manifest.json").read_text())["key"], folder)

    rows = {"id": ["r1", "r2", "r3"], "text": ["a", "b", "c"], "review": ['{"s":1}', '{"s":2}', '{"s":3}']}
    before = entry("a", pl.DataFrame(rows))
    after = entry("b", pl.DataFrame({**rows, "review": ['{"s":1}', '{"s":5}', '{"s":3}'], "extra": [1, 2, 3]}))
    found = compare_records(before, after)
    assert found["changed_count"] == 1 and found["fields_changed"] == {"review": 1}
    assert found["changed"] == [{"id": "r2", "fields": {"review": {"a": '{"s":2}', "b": '{"s":5}'}}}]
    assert found["columns_added"] == ["extra"] and found["columns_removed"] == []


def test_excerpts_show_where_long_values_start_to_differ():
    from synthforge.record_diff import excerpts

    a = "x" * 100 + "the service was great" + "y" * 100
    b = "x" * 100 + "the service was awful" + "y" * 100
    before, after = excerpts(a, b)
    assert before.startswith("...") and before.endswith("...") and "was great" in before and "was awful" in after
    assert excerpts("short", None) == ("short", None) and excerpts([1, 2], [1, 3]) == ("[1, 2]", "[1, 3]")
