"""Every input row is accounted for: read = used + sum(dropped by reason)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from posttrain.errors import DataError


@dataclass
class DataAccounting:
    source: str
    rows_read: int = 0
    examples_used: int = 0  # training examples built (a pair uses two rows)
    rows_used: int = 0
    dropped: Counter = field(default_factory=Counter)

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] += count

    def check_balanced(self) -> None:
        # A bug guard, not a user error: rows must never vanish without a reason.
        assert self.rows_read == self.rows_used + sum(self.dropped.values()), self.to_dict()

    def fail_if_too_many_dropped(self, max_drop_share: float) -> None:
        if self.rows_read and sum(self.dropped.values()) / self.rows_read > max_drop_share:
            reasons = ", ".join(f"{r}: {n}" for r, n in self.dropped.most_common())
            raise DataError(
                f"{self.source}: {sum(self.dropped.values())} of {self.rows_read} rows dropped ({reasons}), "
                f"more than max_drop_share={max_drop_share}; fix the data or raise the limit"
            )

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "rows_read": self.rows_read,
            "rows_used": self.rows_used,
            "examples": self.examples_used,
            "dropped": dict(self.dropped),
        }
