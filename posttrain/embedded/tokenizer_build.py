"""Train the embedded model's tokenizer from the assistant world's text.

The result ships in `posttrain/embedded/tokenizer/`, so nothing is trained or fetched at
run time. Regenerate it (byte for byte the same) with:

    python -m posttrain.embedded.tokenizer_build
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from posttrain.embedded import world

TOKENIZER_DIR = Path(__file__).parent / "tokenizer"
SPECIAL_TOKENS = ["<|pad|>", "<|begin|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
VOCAB_SIZE = 1024

# `<|end|>` closes every turn and is the EOS token, so generation stops after one reply.
# The {% generation %} markers let TRL's assistant-only loss find the assistant tokens.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}<|assistant|>{% generation %}{{ message['content'] }}<|end|>{% endgeneration %}"
    "{% else %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sorted(set(world.corpus())), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|pad|>",
        bos_token="<|begin|>",
        eos_token="<|end|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=256,
    )


if __name__ == "__main__":
    build_tokenizer().save_pretrained(TOKENIZER_DIR)
    print(f"wrote {TOKENIZER_DIR}")
