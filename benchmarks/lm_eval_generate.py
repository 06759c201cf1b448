"""lm-eval's default HF path, as a user drives it by hand: the baseline `posttrain bench` runs against posttrain's eval generation.

`HFLM(pretrained=MODEL_DIR)` with lm-eval's defaults (batch size 1, the model's own dtype) answers every prompt
through `generate_until`: the prompt as the user turn of the model's chat template (what lm-eval renders with
--apply_chat_template), greedy, at most --max-new-tokens new tokens, stopping at the tokenizer's EOS. The device
is the one setting given: lm-eval's default is cuda, which a CPU-only machine does not have.

    python benchmarks/lm_eval_generate.py MODEL_DIR PROMPTS.jsonl [--max-new-tokens 48]

PROMPTS.jsonl holds {"prompt": text} rows; each answer is printed as one JSON string a line.
"""

import argparse
import json
from pathlib import Path

import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM


def load_model(model_dir: str) -> HFLM:
    return HFLM(pretrained=model_dir, device="cuda" if torch.cuda.is_available() else "cpu")


def requests(lm: HFLM, prompts: list[str], max_new_tokens: int) -> list[Instance]:
    generation = {"until": [lm.tokenizer.eos_token], "max_gen_toks": max_new_tokens, "do_sample": False}
    return [Instance(request_type="generate_until", doc={"prompt": prompt}, idx=0,
                     arguments=(lm.apply_chat_template([{"role": "user", "content": prompt}]), generation))
            for prompt in prompts]


def generate(lm: HFLM, prompts: list[str], max_new_tokens: int = 48) -> list[str]:
    return lm.generate_until(requests(lm, prompts, max_new_tokens))


def read_prompts(data_file: str) -> list[str]:
    return [json.loads(line)["prompt"] for line in Path(data_file).read_text(encoding="utf-8").splitlines() if line.strip()]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("data_file")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    cli = parser.parse_args()
    for answer in generate(load_model(cli.model_dir), read_prompts(cli.data_file), cli.max_new_tokens):
        print(json.dumps(answer, ensure_ascii=False))
