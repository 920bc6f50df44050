"""The Connector's memo of pure per-probe parsing: results kept, bounded, errors never kept."""

from __future__ import annotations

import pytest

from probes.connection import BoundedTable, Connector, Memo


def test_a_result_is_computed_once_per_distinct_arguments() -> None:
    calls: list[tuple[str, int]] = []

    def parse(text: str, base: int) -> int:
        calls.append((text, base))
        return int(text, base)

    memo = Memo()
    assert [memo(parse, "10", 10), memo(parse, "10", 10), memo(parse, "10", 16)] == [10, 10, 16]
    assert calls == [("10", 10), ("10", 16)]


def test_each_function_has_its_own_bounded_table() -> None:
    calls: list[int] = []

    def square(n: int) -> int:
        calls.append(n)
        return n * n

    def cube(n: int) -> int:
        return n**3

    memo = Memo(limit=3)
    for n in range(3):
        memo(square, n)
    memo(cube, 0)  # another function's entries do not count against square's table
    memo(square, 2)
    assert calls == [0, 1, 2]  # still kept
    memo(square, 3)  # the table is full: emptied, then 3 kept
    memo(square, 0)
    assert calls == [0, 1, 2, 3, 0]


def test_an_error_is_never_kept() -> None:
    calls = 0

    def bad(text: str) -> int:
        nonlocal calls
        calls += 1
        raise ValueError(text)

    memo = Memo()
    for _ in range(2):
        with pytest.raises(ValueError, match="nope"):
            memo(bad, "nope")
    assert calls == 2


def test_keyed_names_unhashable_arguments_by_id_and_keeps_them_alive() -> None:
    calls: list[list[int]] = []

    def total(numbers: list[int], scale: int) -> int:
        calls.append(numbers)
        return sum(numbers) * scale

    memo = Memo(limit=2)
    numbers = [1, 2]
    assert memo.keyed((id(numbers), 3), total, numbers, 3) == 9
    assert memo.keyed((id(numbers), 3), total, numbers, 3) == 9
    assert len(calls) == 1
    # the entry holds the list: while it is kept, no other object can take that id
    key = id(numbers)
    del numbers
    assert any(key == id(args[0]) for args, _ in memo._keyed[total].values())
    memo.keyed(("a",), total, [1], 1)
    memo.keyed(("b",), total, [2], 1)  # full: emptied first, like the plain tables
    assert len(memo._keyed[total]) == 1


def test_a_bounded_table_makes_each_value_once_and_is_emptied_when_full() -> None:
    calls: list[str] = []

    def upper(key: str) -> str:
        calls.append(key)
        return key.upper()

    table = BoundedTable(upper, limit=2)
    assert [table["a"], table["a"], table["b"]] == ["A", "A", "B"]
    assert calls == ["a", "b"]
    assert table["c"] == "C"  # full: emptied, then "c" kept
    assert dict(table) == {"c": "C"}
    assert table["a"] == "A"
    assert calls == ["a", "b", "c", "a"]


def test_connector_memoises_ip_literals() -> None:
    connector = Connector()
    first = connector._address("127.0.0.1")
    assert first is not None and first.hash == 3668918509
    assert connector._address("127.0.0.1") is first
    assert connector._address("not-an-ip") is None
