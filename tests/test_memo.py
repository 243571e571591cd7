"""remember: the one insert every bounded memo of the exporter uses."""

from __future__ import annotations

from smtp_exporter.memo import remember


def test_a_full_memo_starts_over_instead_of_growing() -> None:
    memo: dict[int, str] = {}
    for key in range(3):
        assert remember(memo, key, str(key), limit=3) == str(key)
    assert memo == {0: "0", 1: "1", 2: "2"}
    assert remember(memo, 3, "3", limit=3) == "3"
    assert memo == {3: "3"}
