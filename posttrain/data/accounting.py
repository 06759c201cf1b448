"""The ledger every step writes: each input row is used, or dropped with one reason.

rows_read = rows_used + sum(dropped by reason), checked when a conversion finishes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from posttrain.errors import DataError

# Rows set aside for the other side of a train/test split are not a data-quality problem,
# so they do not count towards `max_drop_share`. Nor are a feedback store's judgements that say
# nothing to train on (an arena tie, the same vote again, a like of an answer someone disliked).
NOT_A_QUALITY_DROP = frozenset({"other_split", "tie", "same_vote_again", "disliked_elsewhere"})
MAX_ERRORS_KEPT = 5
# What reading changed, kept in `details` and said in the summary.
READING_NOTES = {
    "merged_same_role_turns": "rows whose consecutive same-role turns were merged",
    "duplicate_records_pooled": "duplicate records pooled (counted once)",
}


@dataclass
class DataAccounting:
    source: str
    rows_read: int = 0
    examples_used: int = 0  # training examples built (a pair uses two rows)
    rows_used: int = 0
    dropped: Counter = field(default_factory=Counter)
    formats: Counter = field(default_factory=Counter)  # detected format -> rows
    errors: list[str] = field(default_factory=list)  # first rows skipped by `on_error: skip`, verbatim
    details: dict = field(default_factory=dict)  # conversion facts, e.g. pairs per source, class weights

    def use(self, count: int = 1) -> None:
        self.rows_used += count

    def drop(self, reason: str, count: int = 1) -> None:
        if count:  # a zero would show up as a reason with no rows
            self.dropped[reason] += count

    def skip_error(self, reason: str, message: str) -> None:
        """A bad row skipped under `on_error: skip`: counted by reason, the first few kept verbatim."""
        self.drop(reason)
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(message)

    @property
    def rows_dropped(self) -> int:
        return sum(self.dropped.values())

    def finish(self, examples: list) -> None:
        """Record the examples built, and check that no row vanished without a reason."""
        self.examples_used = len(examples)
        # A bug guard, not a user error: rows must never vanish without a reason.
        assert self.rows_read == self.rows_used + self.rows_dropped, self.to_dict()

    def reasons(self) -> str:
        """The drops by reason, and the first skipped row, for an error that says why nothing is left."""
        reasons = ", ".join(f"{k}: {v}" for k, v in self.dropped.most_common()) or "nothing dropped"
        return reasons + (f"; first skipped row: {self.errors[0]}" if self.errors else "")

    def fail_if_too_many_dropped(self, max_drop_share: float) -> None:
        quality_drops = {r: n for r, n in self.dropped.items() if r not in NOT_A_QUALITY_DROP}
        considered = self.rows_read - (self.rows_dropped - sum(quality_drops.values()))
        if considered and sum(quality_drops.values()) / considered > max_drop_share:
            reasons = ", ".join(f"{r}: {n}" for r, n in Counter(quality_drops).most_common())
            raise DataError(
                f"{self.source}: {sum(quality_drops.values())} of {considered} rows dropped ({reasons}), "
                f"more than max_drop_share={max_drop_share}; fix the data or raise the limit"
            )

    def summary(self) -> str:
        """One line for people: read, used, examples, drops by reason, and what reading changed."""
        dropped = ", ".join(f"{r} {n}" for r, n in self.dropped.most_common()) or "none"
        notes = "".join(f"; {text}: {self.details[key]}" for key, text in READING_NOTES.items() if self.details.get(key))
        return f"{self.rows_read} rows read, {self.rows_used} used, {self.examples_used} examples; dropped: {dropped}{notes}"

    @classmethod
    def joined(cls, parts: list[DataAccounting]) -> DataAccounting:
        """The ledger of several sources converted one by one: counts summed, each source's own ledger
        kept in details["sources"]. One source is its own ledger."""
        if len(parts) == 1:
            return parts[0]
        out = cls(", ".join(p.source for p in parts))
        for part in parts:
            out.rows_read += part.rows_read
            out.rows_used += part.rows_used
            out.examples_used += part.examples_used
            out.dropped.update(part.dropped)
            out.formats.update(part.formats)
            out.errors += part.errors[:MAX_ERRORS_KEPT - len(out.errors)]
        out.details["sources"] = {part.source: part.to_dict() for part in parts}
        return out

    def to_dict(self) -> dict:
        out = {
            "source": self.source,
            "rows_read": self.rows_read,
            "rows_used": self.rows_used,
            "examples": self.examples_used,
            "dropped": dict(self.dropped),
        }
        if self.formats:
            out["formats"] = dict(self.formats)
        if self.errors:
            out["errors"] = list(self.errors)
        if self.details:
            out["details"] = dict(self.details)
        return out
