"""DataOptions: how a stage's data is read, filtered and converted (a training stage's `data_options:`).

One type for the recipe, the library and `posttrain data`: validated with the recipe, before
any model or data is loaded, so this module imports only pydantic and the format names.
The tokenizer that counts tokens is a runtime object, not an option: the conversions take it
as a separate argument.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from posttrain.data.formats import FIELDS, resolve_format
from posttrain.errors import DataError, did_you_mean


class DataOptions(BaseModel):
    """How a stage's data is read and filtered (docs/data.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: str | None = Field(None, description="Force a data format instead of detecting it (e.g. thumbs, pairs, oasst).")
    columns: dict[str, str] = Field(default_factory=dict, description=(
        "Read your file's columns as the fields posttrain knows, right after reading: {field: your_column}, "
        "e.g. {prompt: question, response: answer}."))
    on_error: Literal["fail", "skip"] = Field("fail", description="A bad row stops the run, or is skipped and counted with its reason.")
    dedupe: Literal["exact", "normalized", "none"] = "exact"
    max_tokens: int | None = Field(None, gt=0, description="Drop examples longer than this (prompt + reply, approximate tokens).")
    split: Literal["train", "test"] | None = Field(None, description="Use one side of a deterministic split by prompt.")
    test_share: float = Field(0.1, gt=0, lt=1)
    seed: int = 0
    both_votes: Literal["majority", "drop"] = Field("majority", description="A reply with up and down votes: the net vote decides, or it is dropped.")
    ties: Literal["skip", "fail"] = Field("skip", description="Equal ranks or scores: no pair, or an error naming the row.")
    refusal_for_flagged: str | None = Field(None, min_length=1, description=(
        "Feedback stores (.sqlite): an answer flagged unsafe without a correction gets this as the answer it should have given, "
        "liked and preferred to the flagged one (red-teaming: the prompt that broke the model becomes a refusal example)."))

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str | None) -> str | None:
        """Aliases become the format's name ('pairs' -> 'preference'); 'auto' becomes None."""
        try:
            return resolve_format(value)
        except DataError as e:
            raise PydanticCustomError("unknown_format", "{message}", {"message": str(e)}) from None

    @field_validator("columns")
    @classmethod
    def _known_fields(cls, value: dict[str, str]) -> dict[str, str]:
        """Each key is a field posttrain reads, each value a column name of the user's file."""
        for field, column in value.items():
            if field not in FIELDS:
                raise PydanticCustomError("unknown_field", "{message}", {"message": column_problem(field, column)})
            if not column.strip():
                raise PydanticCustomError("empty_column", "{message}", {"message": (
                    f"the column read as '{field}' is empty; write {{{field}: your_column}}")})
        return value

    @classmethod
    def from_keywords(cls, options: dict) -> DataOptions:
        """Options given as keywords (library callers, `posttrain data`): an unknown name is a
        TypeError, as for any function; a bad value is a `DataError` of one line."""
        unknown = sorted(set(options) - set(cls.model_fields))
        if unknown:
            raise TypeError(f"unknown data option(s) {', '.join(unknown)}; known: {', '.join(cls.model_fields)}")
        try:
            return cls(**options)
        except ValidationError as e:
            raise DataError(_one_line(e)) from None


def column_problem(field: str, column: str) -> str:
    """Why `columns: {field: column}` cannot be read: the field is not one posttrain reads."""
    if field in FIELDS:
        return ""
    if column in FIELDS:
        return (f"'{field}' is not a field posttrain reads, but '{column}' is: columns maps the field posttrain reads "
                f"to your column, so write {{{column}: {field}}}")
    return (f"'{field}' is not a field posttrain reads{did_you_mean(field, FIELDS)}; columns maps the field posttrain reads "
            f"to your column, e.g. {{prompt: {column}}}. Fields: {', '.join(FIELDS)}")


def _one_line(error: ValidationError) -> str:
    first = error.errors()[0]
    name, value = str(first["loc"][0]), first.get("input")
    choices = get_args(DataOptions.model_fields[name].annotation)
    if name == "format":
        return first["msg"]
    if first["type"] in ("unknown_field", "empty_column"):
        return f"columns: {first['msg']}"
    if name == "columns":
        return (f"columns is {value!r}; use a mapping of the field posttrain reads to your file's column, "
                f"e.g. {{prompt: question, response: answer}}")
    if name == "split":
        return f"split is '{value}'; use train, test, or leave it unset for every row"
    if name == "test_share":
        return f"test_share is {value}; use a share between 0 and 1, e.g. 0.1"
    if name == "max_tokens":
        return f"max_tokens is {value}; use a positive number of tokens"
    if choices and all(isinstance(c, str) for c in choices):
        return f"{name} is '{value}'; use one of: {', '.join(choices)}"
    return f"{name} is {value!r}: {first['msg']}"
