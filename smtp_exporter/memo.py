"""Bounded memos: plain dicts of what the exporter would otherwise compute again from the same
input at every probe (a server's replies, label texts, parsed targets).

Readers use `memo.get(key)` on the hot path; `remember` stores a new entry. A full memo is
emptied rather than evicted entry by entry: the inputs worth remembering come back at the next
probe, and a peer that sends something new every time can only make it start over, never grow it.
"""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def remember(memo: dict[K, V], key: K, value: V, *, limit: int) -> V:
    """Store `value` under `key` (emptying `memo` first when it holds `limit` entries); return it."""
    if len(memo) >= limit:
        memo.clear()
    memo[key] = value
    return value
