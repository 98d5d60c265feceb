import polars as pl
import pytest
from helpers import make_ctx, rows, write_entry
from pydantic import ValidationError

from synthforge.errors import UserError
from synthforge.steps.mix import MixParams, MixStep


@pytest.fixture
def inputs(tmp_path):
    real = write_entry(tmp_path, "real_split", rows("r", {"neg": 30, "pos": 10}, "real"))
    synthetic = write_entry(tmp_path, "gen", rows("s", {"neg": 50, "pos": 50}, "synthetic"))
    return {"real": real, "synthetic": synthetic}


def mix(tmp_path, inputs, seed=0, **params):
    step, ctx = make_ctx(MixStep, tmp_path, inputs, seed=seed, **params)
    return step.run(ctx)


def counts(frame: pl.DataFrame, column: str) -> dict[str, int]:
    return dict(frame.group_by(column).len().iter_rows())


def test_fraction_of_total(tmp_path, inputs):
    result = mix(tmp_path, inputs, synthetic_fraction=0.25, total=40)
    assert counts(result.data, "source") == {"real": 30, "synthetic": 10}
    assert result.meta["n_total"] == 40 and result.meta["synthetic_fraction"] == 0.25


def test_fraction_zero_is_real_only_and_one_is_synthetic_only(tmp_path, inputs):
    real_only = mix(tmp_path, inputs, synthetic_fraction=0.0, total=20).data
    assert counts(real_only, "source") == {"real": 20}
    synthetic_only = mix(tmp_path, inputs, synthetic_fraction=1.0, total=20).data
    assert counts(synthetic_only, "source") == {"synthetic": 20}


def test_fraction_zero_needs_no_synthetic_input(tmp_path, inputs):
    result = mix(tmp_path, {"real": inputs["real"], "synthetic": None}, synthetic_fraction=0.0)
    assert result.data.height == 40 and set(result.data["source"]) == {"real"}


def test_null_total_keeps_all_real_and_tops_up_synthetic(tmp_path, inputs):
    result = mix(tmp_path, inputs, synthetic_fraction=0.5)
    assert counts(result.data, "source") == {"real": 40, "synthetic": 40}
    all_synthetic = mix(tmp_path, inputs, synthetic_fraction=1.0)
    assert counts(all_synthetic.data, "source") == {"synthetic": 100}


def test_explicit_counts_and_all(tmp_path, inputs):
    result = mix(tmp_path, inputs, real_count="all", synthetic_count=7)
    assert counts(result.data, "source") == {"real": 40, "synthetic": 7}


def test_balance_keeps_labels_equal(tmp_path, inputs):
    result = mix(tmp_path, inputs, synthetic_fraction=0.5, total=40, balance=True)
    data = result.data
    assert counts(data, "label") == {"neg": 20, "pos": 20}
    assert counts(data.filter(pl.col("source") == "real"), "label") == {"neg": 10, "pos": 10}
    assert result.meta["per_label"] == {"real": {"neg": 10, "pos": 10}, "synthetic": {"neg": 10, "pos": 10}}


def test_balance_shortage_names_the_label(tmp_path, inputs):
    with pytest.raises(UserError) as error:
        mix(tmp_path, inputs, synthetic_fraction=0.0, total=30, balance=True)
    assert "'pos' has 10" in str(error.value) and "take_available" in str(error.value)


def test_balance_take_available_shrinks_to_scarcest_label(tmp_path, inputs):
    data = mix(tmp_path, inputs, synthetic_fraction=0.0, total=30, balance=True, on_shortage="take_available").data
    assert counts(data, "label") == {"neg": 10, "pos": 10}


def test_shortage_error_names_field_and_what_exists(tmp_path, inputs):
    with pytest.raises(UserError) as error:
        mix(tmp_path, inputs, real_count=50, synthetic_count=0)
    message = str(error.value)
    assert error.value.field == "real_count"
    assert "needs 50 'real' rows but the input has 40" in message and "'neg': 30" in message


def test_shortage_take_available(tmp_path, inputs):
    result = mix(tmp_path, inputs, synthetic_fraction=0.5, total=300, on_shortage="take_available")
    assert counts(result.data, "source") == {"real": 40, "synthetic": 100}
    assert result.meta["requested"] == {"real": 150, "synthetic": 150} and result.meta["shortfall"] == 160
    assert mix(tmp_path, inputs, synthetic_fraction=0.5, total=20).meta["shortfall"] == 0


def test_max_per_label_caps_each_source(tmp_path, inputs):
    data = mix(tmp_path, inputs, real_count="all", synthetic_count="all", max_per_label=5).data
    assert data.group_by(["source", "label"]).len()["len"].to_list() == [5, 5, 5, 5]


def test_provenance_columns(tmp_path, inputs):
    data = mix(tmp_path, inputs, synthetic_fraction=0.5, total=20).data
    origins = dict(data.select("source", "origin").unique().iter_rows())
    assert origins["real"] == f"real_split@{inputs['real'].key[:12]}"
    assert origins["synthetic"] == f"gen@{inputs['synthetic'].key[:12]}"
    assert "__mix_role" not in data.columns


def test_seeded_deterministic_and_seed_sensitive(tmp_path, inputs):
    first = mix(tmp_path, inputs, seed=1, synthetic_fraction=0.5, total=20).data
    again = mix(tmp_path, inputs, seed=1, synthetic_fraction=0.5, total=20).data
    other = mix(tmp_path, inputs, seed=2, synthetic_fraction=0.5, total=20).data
    assert first["id"].to_list() == again["id"].to_list()
    assert set(first["id"]) != set(other["id"])


def test_independent_of_input_row_order(tmp_path, inputs):
    shuffled = inputs["synthetic"].frame().sample(fraction=1.0, shuffle=True, seed=3)
    other = write_entry(tmp_path / "b", "gen", shuffled)
    first = mix(tmp_path, inputs, synthetic_fraction=1.0, total=10).data
    second = mix(tmp_path, {"real": inputs["real"], "synthetic": other}, synthetic_fraction=1.0, total=10).data
    assert sorted(first["id"]) == sorted(second["id"])


def test_larger_request_is_superset(tmp_path, inputs):
    small = mix(tmp_path, inputs, real_count=0, synthetic_count=10).data
    large = mix(tmp_path, inputs, real_count=0, synthetic_count=30).data
    assert set(small["id"]) <= set(large["id"])


def test_duplicate_ids_across_inputs_are_an_error(tmp_path, inputs):
    clash = write_entry(tmp_path, "clash", rows("r", {"neg": 5}, "synthetic"))
    with pytest.raises(UserError, match="both real and synthetic"):
        mix(tmp_path, {"real": inputs["real"], "synthetic": clash}, real_count="all", synthetic_count="all")


def test_missing_input_for_fraction_is_an_error(tmp_path, inputs):
    with pytest.raises(UserError) as error:
        mix(tmp_path, {"real": inputs["real"], "synthetic": None}, synthetic_fraction=0.5)
    assert error.value.field == "synthetic"


@pytest.mark.parametrize(
    "params",
    [
        {"synthetic_fraction": 0.5, "real_count": 3},
        {"real_count": 3, "total": 10},
        {},
        {"synthetic_fraction": 1.5},
        {"real_count": -1},
    ],
)
def test_conflicting_or_invalid_rules_rejected(params):
    with pytest.raises(ValidationError):
        MixParams(real="a", synthetic="b", **params)


def test_top_up_is_sized_on_the_real_rows_actually_taken(tmp_path, inputs):
    # balance trims real to 10 + 10 rows, so a 50% top-up adds 20 synthetic rows, not 40.
    result = mix(tmp_path, inputs, synthetic_fraction=0.5, balance=True, on_shortage="take_available")
    assert result.meta["n_real"] == 20 and result.meta["n_synthetic"] == 20
    assert result.meta["synthetic_fraction"] == 0.5


def test_embedding_arrays_survive_the_mix(tmp_path):
    dim = 4
    def embedded(prefix, source):
        frame = rows(prefix, {"a": 3, "b": 3}, source)
        return frame.with_columns(pl.Series("embedding", [[0.5] * dim] * frame.height).cast(pl.Array(pl.Float32, dim)))
    real = write_entry(tmp_path, "r", embedded("r", "real"))
    synthetic = write_entry(tmp_path, "s", embedded("s", "synthetic"))
    data = mix(tmp_path, {"real": real, "synthetic": synthetic}, real_count="all", synthetic_count="all").data
    assert data.schema["embedding"] == pl.Array(pl.Float32, dim) and data.height == 12


def ranked(prefix: str, per_label: int) -> pl.DataFrame:
    """Selected rows: ids in reverse of their selection rank, interleaved by label as `select` writes them."""
    frame = rows(prefix, {"neg": per_label, "pos": per_label}, "synthetic")
    rank = [2 * (per_label - 1 - i) + (label == "pos") for label, i in zip(frame["label"], [*range(per_label)] * 2)]
    return frame.with_columns(pl.Series("selection_rank", rank, dtype=pl.Int64))


def test_rank_order_takes_the_selections_first_picks_and_random_keeps_the_old_draw(tmp_path, inputs):
    inputs = {"real": write_entry(tmp_path, "real24", rows("r", {"neg": 24, "pos": 24}, "real")),
              "synthetic": write_entry(tmp_path, "selected", ranked("s", 24))}
    picked = mix(tmp_path, inputs, synthetic_fraction=0.25, total=32, balance=True).data.filter(pl.col("source") == "synthetic")
    assert sorted(picked["selection_rank"].to_list()) == list(range(8))  # the top 8 of 48, 4 per label
    unbalanced = mix(tmp_path, inputs, synthetic_fraction=0.25, total=32).data.filter(pl.col("source") == "synthetic")
    assert sorted(unbalanced["selection_rank"].to_list()) == list(range(8))
    drawn = mix(tmp_path, inputs, synthetic_fraction=0.25, total=32, balance=True, order="random").data
    assert sorted(drawn.filter(pl.col("source") == "synthetic")["selection_rank"].to_list()) != list(range(8))
    real_rows = lambda data: sorted(data.filter(pl.col("source") == "real")["id"].to_list())
    ranked_mix = mix(tmp_path, inputs, synthetic_fraction=0.25, total=32, balance=True).data
    assert real_rows(ranked_mix) == real_rows(drawn)  # the order of the synthetic rows does not move the real draw
    assert MixStep.version == "2"


def test_arms_replace_augment_and_the_real_upper_bound(tmp_path, inputs):
    extra = write_entry(tmp_path, "more_real", pl.concat([rows("r", {"neg": 30, "pos": 10}, "real"), rows("x", {"neg": 20, "pos": 20}, "real")]))
    base = dict(synthetic_fraction=0.25, total=40, balance=False)
    replace = mix(tmp_path, inputs, **base).data
    assert counts(replace, "source") == {"real": 30, "synthetic": 10}
    augment = mix(tmp_path, inputs, arm="augment", **base)
    assert counts(augment.data, "source") == {"real": 40, "synthetic": 10} and augment.meta["arm"] == "augment"
    upper = mix(tmp_path, {**inputs, "extra_real": extra}, arm="upper", **base).data
    assert counts(upper, "source") == {"real": 50} and upper["id"].n_unique() == 50
    assert set(upper["id"]) >= {f"r-neg-{i}" for i in range(30)}  # every real row, then 10 rows not already in it
    assert len(set(upper["id"]) - set(rows("r", {"neg": 30, "pos": 10}, "real")["id"])) == 10
    balanced = mix(tmp_path, {**inputs, "extra_real": extra}, arm="upper", synthetic_fraction=0.5, total=40, balance=True).data
    extra_rows = balanced.filter(pl.col("id").str.starts_with("x-"))
    assert counts(extra_rows, "label") == {"neg": 10, "pos": 10}
    zero = mix(tmp_path, {**inputs, "extra_real": extra}, arm="upper", synthetic_fraction=0.0, total=40).data
    assert sorted(zero["id"]) == sorted(mix(tmp_path, inputs, arm="augment", synthetic_fraction=0.0, total=40).data["id"])


@pytest.mark.parametrize("params, message", [
    ({"real": "a", "synthetic": "b", "synthetic_fraction": 0.5, "arm": "augment"}, "needs real, synthetic_fraction and total"),
    ({"real": "a", "synthetic": "b", "synthetic_fraction": 0.5, "total": 10, "arm": "upper"}, "needs extra_real"),
])
def test_arms_need_their_inputs(params, message):
    with pytest.raises(ValidationError, match=message):
        MixParams(**params)


def scored_inputs(tmp_path, scores):
    real = write_entry(tmp_path, "real_split", rows("r", {"neg": 30, "pos": 30}, "real"))
    synthetic = rows("s", {"neg": 100, "pos": 100}, "synthetic").with_columns(pl.Series("score", scores, dtype=pl.Int64))
    return {"real": real, "synthetic": write_entry(tmp_path, "judged", synthetic)}


def test_weight_by_draws_high_scores_more_often_and_a_larger_draw_is_a_superset(tmp_path):
    inputs = scored_inputs(tmp_path, [5 if i % 4 == 0 else 1 for i in range(200)])  # a quarter of the rows score 5
    taken = mix(tmp_path, inputs, synthetic_fraction=0.5, total=80, weight_by="score")
    synthetic = taken.data.filter(pl.col("source") == "synthetic")
    share_high = (synthetic["score"] == 5).mean()
    assert synthetic.height == 40 and share_high > 0.45  # 5 times the weight: ~62% expected, 25% unweighted
    assert taken.meta["weight_by"]["column"] == "score" and taken.meta["weight_by"]["mean_taken"] > 2.5
    larger = mix(tmp_path, inputs, synthetic_fraction=0.5, total=120, weight_by="score").data
    assert set(synthetic["id"]) <= set(larger.filter(pl.col("source") == "synthetic")["id"])
    balanced = mix(tmp_path, inputs, synthetic_fraction=0.5, total=80, weight_by="score", balance=True).data
    assert (balanced.filter(pl.col("source") == "synthetic")["score"] == 5).mean() > 0.45


def test_weight_by_zero_and_missing_scores_come_last(tmp_path):
    inputs = scored_inputs(tmp_path, [None if i % 2 else 3 for i in range(200)])
    synthetic = mix(tmp_path, inputs, synthetic_count=100, real_count=0, weight_by="score").data
    assert synthetic["score"].null_count() == 0  # exactly the 100 scored rows


def test_weight_by_mistakes_are_located(tmp_path):
    for scores, column, words in (([1] * 200, "scroe", "no column"), ([-1] * 200, "score", "negative"),
                                  ([1] * 200, "text", "not numeric")):
        with pytest.raises(UserError) as refused:
            mix(tmp_path / column, scored_inputs(tmp_path / column, scores), synthetic_fraction=0.5, total=20, weight_by=column)
        assert refused.value.field == "weight_by" and words in refused.value.message
