from collections import OrderedDict

from conftest import seed_method_config

from mei.hashing import hash_list_of_dictionaries, make_hash


def test_seed_method_config_hash_equals_the_reference():
    assert make_hash(seed_method_config(device="cuda")) == "b5449cd6f2826bbcbb6d77c4ba01d0a0"


def test_hash_list_of_dictionaries_equals_the_reference_and_ignores_order_and_repeats():
    expected = "536072017a2a3501ea8f09fffa51ee61"
    assert hash_list_of_dictionaries([{"m": 0}, {"m": 1}]) == expected
    assert hash_list_of_dictionaries([{"m": 1}, {"m": 0}, {"m": 1}]) == expected


def test_hash_conventions():
    empty = "d41d8cd98f00b204e9800998ecf8427e"
    assert make_hash({}) == make_hash([]) == empty
    assert make_hash([1, 2]) == make_hash((1, 2))
    assert make_hash(1) == make_hash("1")
    assert make_hash({"a": 1, "b": 2}) == make_hash({"b": 2, "a": 1})
    assert make_hash(OrderedDict(a=1, b=2)) != make_hash(OrderedDict(b=2, a=1))
