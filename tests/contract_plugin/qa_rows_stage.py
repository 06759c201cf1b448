"""A plugin stage kind of the `data` role, written only against posttrain's documented stage
contract (docs/writing-a-stage.md): it writes chat rows that a later stage reads with
`data: stage:<name>`. tests/test_stage_contract.py installs it through its dist-info."""

import json

from pydantic import Field

from posttrain.atomic import write_text_atomic
from posttrain.stage import Role, Stage, StageConfig, StageResult


class QARowsConfig(StageConfig):
    answers: dict[str, str] = Field(description="question -> the answer to teach")
    repeat: int = Field(1, gt=0, description="Write each row this many times.")


class QARowsStage(Stage):
    kind = "qa_rows"
    role = Role.DATA
    Config = QARowsConfig

    def run(self, ctx):
        rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
                for q, a in ctx.config.answers.items() for _ in range(ctx.config.repeat)]
        write_text_atomic(ctx.data_output, "".join(json.dumps(row) + "\n" for row in rows))
        return StageResult(metrics={"rows_written": len(rows)})
