"""`posttrain chat MODEL`: talk to a model in the terminal and judge its answers.

A line is a message to the model, or a command about its last answer. The answer streams as
it is generated; every judgement is appended to the feedback store at once. Reads its input
line by line, so piped input works the same as typing (end of input quits).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from posttrain.errors import did_you_mean
from posttrain.feedback.models import ChatModel, ModelSource, Sampling, find_model
from posttrain.feedback.store import Answer, FeedbackError, FeedbackStore, Judgement

HELP = """commands (about the last answer, unless said otherwise):
  /up                rate it up (a good answer)
  /down              rate it down (a bad answer)
  /edit TEXT         write the answer it should have given; the conversation goes on from yours
  /correct           the same, over several lines: end with a line holding a single '.'
  /flag              flag it as unsafe (it becomes a disliked answer)
  /retry             answer again (the last answer is discarded, not judged)
  /model NAME        switch model: a stage of the same run (e.g. sft) or a model directory
  /new               start a new conversation
  /help              this list
  /quit              leave (so does end of input)"""
COMMANDS = ("/up", "/down", "/edit", "/correct", "/flag", "/retry", "/model", "/new", "/help", "/quit", "/exit")


class TerminalChat:
    def __init__(self, source: ModelSource, store: FeedbackStore, sampling: Sampling, user_id: str, system: str | None = None,
                 stdin: TextIO | None = None, stdout: TextIO | None = None):
        self.store, self.sampling, self.user_id, self.system = store, sampling, user_id, system
        self.stdin, self.stdout = stdin or sys.stdin, stdout or sys.stdout
        self._models: dict[Path, ChatModel] = {}
        self.model = self._load(source)
        self.messages: list[dict] = []
        self.last: Answer | None = None  # the answer that commands judge

    def _load(self, source: ModelSource) -> ChatModel:
        if source.directory not in self._models:
            self._models[source.directory] = ChatModel(source)
        return self._models[source.directory]

    def say(self, text: str = "", end: str = "\n") -> None:
        self.stdout.write(text + end)
        self.stdout.flush()

    def run(self) -> int:
        self.say(f"chatting with {self.model.name} ({self.model.source.directory}); feedback goes to {self.store.path}. "
                 f"/help lists the commands.")
        while True:
            self.say("you> ", end="")
            line = self.stdin.readline()
            if not line:  # end of input
                self.say()
                break
            line = line.rstrip("\n")
            if not line.strip():
                continue
            try:
                if line.startswith("/"):
                    if not self.command(line):
                        break
                else:
                    self.ask(line)
            except FeedbackError as e:
                self.say(f"error: {e}")
        self.say(f"bye; {self.store.count()} judgements in {self.store.path}")
        return 0

    # -- talking ---------------------------------------------------------------
    def ask(self, text: str) -> None:
        if self.messages and self.messages[-1]["role"] == "user":
            self.messages.pop()  # an earlier question that got no answer (an error): replaced by this one
        self.messages.append({"role": "user", "content": text})
        self.answer()

    def answer(self) -> None:
        conversation = ([{"role": "system", "content": self.system}] if self.system else []) + self.messages
        self.say(f"{self.model.name}> ", end="")
        answer, dropped = self.model.reply(conversation, self.sampling, on_text=lambda t: self.say(t, end=""))
        self.say()
        if dropped:
            self.say(f"(the {dropped} oldest messages were left out to fit {self.model.name}'s context)")
        self.messages.append({"role": "assistant", "content": answer.text})
        self.last = answer

    # -- commands --------------------------------------------------------------
    def command(self, line: str) -> bool:
        """Run a command; False to quit."""
        name, _, rest = line.partition(" ")
        rest = rest.strip()
        if name in ("/quit", "/exit"):
            return False
        if name == "/help":
            self.say(HELP)
        elif name == "/new":
            self.messages, self.last = [], None
            self.say("new conversation")
        elif name == "/model":
            self.switch(rest)
        elif name in ("/up", "/down"):
            self.judge(Judgement("rating", self._last(name), rating=1 if name == "/up" else -1, **self._who()), f"rated {name[1:]}")
        elif name == "/flag":
            self.judge(Judgement("flag", self._last(name), flag="unsafe", **self._who()), "flagged as unsafe")
        elif name in ("/edit", "/correct"):
            last = self._last(name)
            text = rest if name == "/edit" else self._read_until_dot()
            if not text.strip():
                raise FeedbackError(f"{name}: give the answer it should have given" + (" after /edit" if name == "/edit" else ""))
            self.judge(Judgement("edit", last, correction=text, **self._who()), "saved your answer")
            self.messages[-1] = {"role": "assistant", "content": text}  # the conversation goes on from the better answer
        elif name == "/retry":
            self._last(name)
            self.messages.pop()
            self.last = None
            self.answer()
        else:
            raise FeedbackError(f"unknown command '{name}'{did_you_mean(name, COMMANDS)}; /help lists the commands")
        return True

    def _who(self) -> dict:
        return {"user_id": self.user_id, "source": "chat"}

    def _last(self, command: str) -> Answer:
        if self.last is None:
            raise FeedbackError(f"{command}: there is no answer to judge yet; ask something first")
        return self.last

    def judge(self, judgement: Judgement, done: str) -> None:
        row, _ = self.store.add(judgement)
        self.say(f"{done} (#{row})")

    def _read_until_dot(self) -> str:
        self.say("your answer; end with a line holding a single '.':")
        lines = []
        while True:
            line = self.stdin.readline()
            if not line or line.rstrip("\n") == ".":
                return "\n".join(lines)
            lines.append(line.rstrip("\n"))

    def switch(self, name: str) -> None:
        if not name:
            raise FeedbackError("/model: name a stage of the same run (e.g. sft) or a model directory")
        here = self.model.source
        sibling = here.directory.parent.parent / name if here.stage else None
        target = sibling if sibling is not None and sibling.is_dir() else Path(name)
        self.model = self._load(find_model(target))
        self.say(f"now chatting with {self.model.name} (the conversation goes on)")
