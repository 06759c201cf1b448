"""The filters of self-instruct (Wang et al. 2022, section 2.3), each a named reason in the accounting.

A new instruction is kept only when it is novel: its ROUGE-L F-measure with every seed instruction
and every instruction kept before it is below a threshold (0.7 in the paper). ROUGE-L comes from
Google's `rouge-score` package (the implementation the paper's own code calls), with its default
tokenizer: lower-cased alphanumeric words, no stemming.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Instructions a text-only model cannot carry out (the paper's list, plus audio/video).
UNSUPPORTED_WORDS = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps", "draw", "plot",
                     "go to", "video", "audio", "music", "flowchart", "diagram", "photo", "photos", "chart", "charts")
_UNSUPPORTED = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in UNSUPPORTED_WORDS) + r")\b", re.IGNORECASE)
_WORD = re.compile(r"\w+")

# Reasons, in the order they are checked.
EMPTY_INSTRUCTION = "empty_instruction"
TOO_SHORT = "instruction_too_short"
TOO_LONG = "instruction_too_long"
UNSUPPORTED = "unsupported_modality"
PUNCTUATION_START = "starts_with_punctuation"
NOT_LATIN_START = "starts_with_non_latin"
SIMILAR = "similar_to_existing"
EMPTY_OUTPUT = "empty_output"
COPIES_INPUT = "output_copies_input"
COPIES_INSTRUCTION = "output_copies_instruction"
CUT_OFF = "output_cut_off"
INSTRUCTION_REASONS = (EMPTY_INSTRUCTION, TOO_SHORT, TOO_LONG, UNSUPPORTED, PUNCTUATION_START, NOT_LATIN_START, SIMILAR)
INSTANCE_REASONS = (EMPTY_OUTPUT, COPIES_INPUT, COPIES_INSTRUCTION, CUT_OFF)


def words(text: str) -> int:
    return len(_WORD.findall(text))


def instruction_problem(instruction: str, min_words: int, max_words: int) -> str | None:
    """Why an instruction is dropped before its novelty is measured, or None."""
    text = instruction.strip()
    if not text:
        return EMPTY_INSTRUCTION
    count = words(text)
    if count < min_words:
        return TOO_SHORT
    if count > max_words:
        return TOO_LONG
    if _UNSUPPORTED.search(text):
        return UNSUPPORTED
    first = text[0]
    if unicodedata.category(first).startswith(("P", "S")):
        return PUNCTUATION_START
    if first.isalpha() and not ("a" <= first.lower() <= "z"):
        return NOT_LATIN_START
    return None


def instance_problem(instruction: str, input_text: str, output: str, cut_off: bool, drop_cut_off: bool) -> str | None:
    """Why a generated instance (input, output) of `instruction` is dropped, or None."""
    if not output.strip():
        return EMPTY_OUTPUT
    if input_text.strip() and _squash(output) == _squash(input_text):
        return COPIES_INPUT
    if _squash(output) == _squash(instruction):  # a weak teacher's echo ("The answer is 12." -> "The answer is 12.")
        return COPIES_INSTRUCTION
    if cut_off and drop_cut_off:
        return CUT_OFF
    return None


def _squash(text: str) -> str:
    return " ".join(_WORD.findall(text.casefold()))


@dataclass(frozen=True)
class Similarity:
    score: float
    closest: str


class NoveltyPool:
    """Instructions a new one is compared with: the seeds and every instruction kept so far."""

    def __init__(self, instructions: list[str], threshold: float):
        from rouge_score import rouge_scorer

        self._scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        self.threshold = threshold
        self.instructions: list[str] = []
        for instruction in instructions:
            self.add(instruction)

    def add(self, instruction: str) -> None:
        self.instructions.append(instruction)

    def most_similar(self, instruction: str) -> Similarity:
        """The highest ROUGE-L F-measure of `instruction` with any pooled instruction."""
        best = Similarity(0.0, "")
        for other in self.instructions:
            score = self._scorer.score(other, instruction)["rougeL"].fmeasure
            if score > best.score:
                best = Similarity(score, other)
        return best

    def is_novel(self, similarity: Similarity) -> bool:
        return similarity.score < self.threshold
