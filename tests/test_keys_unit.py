"""keys.py directly: the canonical encoding rules, exclusions and credential stripping a key relies on."""

from __future__ import annotations

from pathlib import Path

import pytest
import xxhash
from pydantic import Field

from synthforge.keys import (canonical, credential_free_url, encode, file_hash, key_of, key_params, runtime_fields,
                             step_components)
from synthforge.stepapi import StepParams


def test_integral_floats_below_2_53_encode_as_ints():
    assert encode(3.0) == encode(3) == b"3"
    assert encode(-0.0) == b"0"
    assert encode(2.0**53 - 1) == b"9007199254740991"
    assert encode(2.0**53) == b"9007199254740992.0"  # beyond it a float is not exactly an int: kept a float
    assert encode(0.5) == b"0.5"
    assert encode(float("inf")) == b"Infinity"


def test_dict_order_and_key_types_do_not_matter_nesting_does():
    assert key_of({"a": 1, "b": {"x": 1, "y": 2}}) == key_of({"b": {"y": 2, "x": 1}, "a": 1})
    assert encode({1: "one"}) == encode({"1": "one"}) == b'{"1":"one"}'
    assert key_of({"a": {"b": 1}}) != key_of({"a": {"b": 1.5}})
    assert key_of([1, 2]) != key_of([2, 1])  # lists keep their order


def test_tuples_paths_and_text_encode_plainly():
    assert encode((1, 2)) == encode([1, 2]) == b"[1,2]"
    assert encode(Path("a/b.csv")) == b'"a/b.csv"'
    assert encode("café") == '"café"'.encode()  # UTF-8, not \u escapes
    assert encode({"a": [1, {"b": None}]}) == b'{"a":[1,{"b":null}]}'  # no spaces


def test_key_is_xxh3_128_of_the_canonical_json():
    assert key_of({"b": 2.0, "a": 1}) == xxhash.xxh3_128_hexdigest(b'{"a":1,"b":2}')
    assert len(key_of({})) == 32


class _Backend(StepParams):
    model: str
    device: str = Field("auto", exclude=True)


class _Params(StepParams):
    n: int
    batch_size: int = Field(8, exclude=True)
    backend: _Backend


def test_runtime_fields_are_excluded_at_every_depth():
    params = _Params(n=3, batch_size=64, backend=_Backend(model="m", device="cuda"))
    assert key_params(params) == {"n": 3, "backend": {"model": "m"}}
    assert canonical(params) == {"backend": {"model": "m"}, "n": 3}
    assert runtime_fields(_Params) == ["batch_size", "backend.device"]
    same = _Params(n=3, backend=_Backend(model="m"))
    assert key_of(step_components("k", "1", params, {}, {}, {}, 0)) == key_of(step_components("k", "1", same, {}, {}, {}, 0))


def test_step_components_hash_file_contents_not_paths(tmp_path):
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    one.write_text("a,b\n")
    two.write_text("a,b\n")
    params = _Params(n=1, backend=_Backend(model="m"))
    a = step_components("load", "1", params, {"input": "k1:data"}, {"path": one}, {"v": 1}, 7)
    b = step_components("load", "1", params, {"input": "k1:data"}, {"path": two}, {"v": 1}, 7)
    assert a == b and a["files"]["path"] == xxhash.xxh3_128_hexdigest(b"a,b\n")
    assert set(a) == {"kind", "version", "params", "inputs", "files", "identity", "seed"}


def test_file_hash_follows_an_edited_file(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("one")
    first = file_hash(path)
    path.write_text("two!")
    assert file_hash(path) != first == xxhash.xxh3_128_hexdigest(b"one")


@pytest.mark.parametrize("url, expected", [
    ("https://user:pw@api.example.com/v1/", "https://api.example.com/v1"),
    ("http://host:8000/v1?api_key=s3cret&region=eu", "http://host:8000/v1?region=eu"),
    ("https://h/v1?X-Amz-Signature=abc&sig=1&Token=2&model=m", "https://h/v1?model=m"),
    ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
])
def test_credential_free_url_drops_user_info_and_secret_parameters(url, expected):
    assert credential_free_url(url) == expected


def test_shown_url_and_url_secrets_leave_no_credential_in_a_message():
    from synthforge.keys import shown_url, url_secrets

    url = "https://u:pw1@host:8000/v1/?api_key=sk%2Babc&api-version=2024-02-01&sig=xyz&page=a"
    assert shown_url(url) == "https://host:8000/v1"
    assert set(url_secrets(url)) == {"u", "pw1", "sk%2Babc", "sk+abc", "xyz"} - {"u"}  # too short to scrub safely
