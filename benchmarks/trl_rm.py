"""Plain TRL reward modelling, as a user writes it by hand: the baseline `posttrain bench` runs against `posttrain`'s reward_model stage.

Only what the benchmark fixes is set (model, data, LoRA r=16 on all linear layers, batch 8, max length 128,
the step count, learning rate and seed); everything else is TRL's default (bf16 where the machine has it,
activation checkpointing on; RewardTrainer loads the model from its directory with a fresh one-output score
head, which PEFT trains in full beside the adapter). `--fp32` is the same script with bf16=False.

    python benchmarks/trl_rm.py MODEL_DIR PAIRS.jsonl OUTPUT_DIR [--steps 20] [--fp32]

PAIRS.jsonl holds conversational preference rows: {"prompt": [messages], "chosen": [messages], "rejected": [messages]}.
"""

import argparse

import torch
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoTokenizer
from trl import RewardConfig, RewardTrainer


def build_trainer(model_dir: str, data_file: str, output_dir: str, steps: int = 20, fp32: bool = False,
                  learning_rate: float = 1e-4, seed: int = 0) -> RewardTrainer:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset = load_dataset("json", data_files=data_file, split="train")
    args = RewardConfig(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=8,
        max_length=128,
        learning_rate=learning_rate,
        seed=seed,
        report_to="none",
        save_strategy="no",
        use_cpu=not torch.cuda.is_available(),  # TRL refuses its default bf16 on a CPU-only machine otherwise
        **({"bf16": False} if fp32 else {}),
    )
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="SEQ_CLS")
    return RewardTrainer(model=model_dir, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("data_file")
    parser.add_argument("output_dir")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--fp32", action="store_true", help="bf16=False: train in float32")
    cli = parser.parse_args()
    build_trainer(cli.model_dir, cli.data_file, cli.output_dir, cli.steps, cli.fp32).train()
