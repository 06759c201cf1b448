"""SFT's completion-only head (posttrain.completion_loss) computes the loss and gradients the model's own
loss does, on the real embedded model and tokenizer, with real chat-templated examples: float32, to
within 1e-5 relative for the loss and 1e-4 relative (1e-6 absolute) for every gradient."""

from __future__ import annotations

import pytest
import torch

from conftest import sft_stage_context
from posttrain.completion_loss import completion_loss, supports
from posttrain.data.sources import load_rows
from posttrain.data.training_data import to_sft_examples
from posttrain.embedded.model import build_embedded_model, load_embedded_tokenizer

LOSS_RTOL = 1e-5
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-6


@pytest.fixture(scope="module")
def tokenizer():
    return load_embedded_tokenizer()


def model(tokenizer):
    return build_embedded_model("tiny-chat", tokenizer, seed=0).float().train()


def batch(tokenizer, count: int = 6) -> dict:
    """Chat-templated prompt+completion rows, right-padded; labels -100 on the prompt and the padding."""
    examples, _ = to_sft_examples(load_rows("builtin:assistant_world/sft", "fail", {}), "builtin:assistant_world/sft")
    rows = []
    for example in examples[:count]:
        prompt = tokenizer.apply_chat_template(example["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False)
        full = tokenizer.apply_chat_template(example["prompt"] + example["completion"], tokenize=True, return_dict=False)
        assert full[:len(prompt)] == prompt
        rows.append((full, len(prompt)))
    width = max(len(full) for full, _ in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([full + [pad] * (width - len(full)) for full, _ in rows])
    attention_mask = torch.tensor([[1] * len(full) + [0] * (width - len(full)) for full, _ in rows])
    labels = torch.tensor([[-100] * cut + full[cut:] + [-100] * (width - len(full)) for full, cut in rows])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def gradients(module) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in module.named_parameters() if p.grad is not None}


def reference(module, inputs) -> tuple[float, dict]:
    module.zero_grad()
    loss = module(**inputs).loss  # the model's own mean next-token cross-entropy over labels != -100
    loss.backward()
    return loss.item(), gradients(module)


def fast(module, causal_lm, inputs, **options) -> tuple[float, dict, dict]:
    module.zero_grad()
    loss, counts = completion_loss(causal_lm, inputs, **options)
    loss.backward()
    return loss.item(), gradients(module), counts


def assert_same(expected: tuple[float, dict], got: tuple[float, dict]) -> None:
    assert got[0] == pytest.approx(expected[0], rel=LOSS_RTOL)
    assert got[1].keys() == expected[1].keys() and expected[1]
    for name, grad in expected[1].items():
        torch.testing.assert_close(got[1][name], grad, rtol=GRAD_RTOL, atol=GRAD_ATOL, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("chunk_tokens", [2048, 7], ids=["one chunk", "checkpointed chunks"])
def test_same_loss_and_gradients_as_the_models_own_loss(tokenizer, chunk_tokens):
    net, inputs = model(tokenizer), batch(tokenizer)
    assert supports(net)
    expected = reference(net, inputs)
    loss, grads, counts = fast(net, net, inputs, chunk_tokens=chunk_tokens)
    assert_same(expected, (loss, grads))
    assert counts["tokens"] == int((inputs["labels"][:, 1:] != -100).sum())
    assert counts["tokens"] > chunk_tokens or chunk_tokens == 2048  # the checkpointed case has several chunks
    assert 0 <= counts["correct"] <= counts["tokens"]


@pytest.mark.slow  # peft's first import alone takes seconds
def test_same_gradients_for_a_lora_adapter(tokenizer):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    peft_model = get_peft_model(model(tokenizer), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    # LoRA's B starts at zero, which would make every A gradient zero: give the adapter some weight first.
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    inputs = batch(tokenizer)
    expected = reference(peft_model, inputs)
    loss, grads, _ = fast(peft_model, peft_model.get_base_model(), inputs)
    assert_same(expected, (loss, grads))
    assert all("lora_" in name for name in grads)


def test_gradient_accumulation_divides_by_the_trainers_count(tokenizer):
    net, inputs = model(tokenizer), batch(tokenizer)
    tokens = int((inputs["labels"][:, 1:] != -100).sum())
    mean_loss, _ = completion_loss(net, inputs)
    summed_over_more, _ = completion_loss(net, inputs, num_items_in_batch=torch.tensor(3 * tokens))
    assert summed_over_more.item() == pytest.approx(mean_loss.item() / 3, rel=LOSS_RTOL)


def test_a_batch_without_completion_tokens_is_a_zero_loss_with_zero_gradients(tokenizer):
    net, inputs = model(tokenizer), batch(tokenizer, count=2)
    inputs["labels"] = torch.full_like(inputs["labels"], -100)
    loss, counts = completion_loss(net, inputs)
    loss.backward()
    assert loss.item() == 0.0 and counts == {"tokens": 0, "correct": 0}
    assert all(float(p.grad.abs().max()) == 0.0 for p in net.parameters() if p.grad is not None)


@pytest.mark.slow  # builds TRL's trainer twice
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_sft_stages_trainer_computes_trls_loss(tmp_path, precision):
    """Wired into the stage: the sft stage's trainer (LoRA, the Trainer's own collated batch, its autocast)
    gives the loss TRL's SFTTrainer computes for the same batch, and trains through the completion head."""
    from trl import SFTTrainer

    from posttrain.stages.sft import SFTStage
    from posttrain.training_settings import bf16_supported

    if precision == "bf16" and not bf16_supported("cpu"):
        pytest.skip("this CPU has no native bf16")
    ctx = sft_stage_context(tmp_path, precision)
    trainer = SFTStage().build_trainer(ctx)
    assert isinstance(trainer, SFTTrainer) and type(trainer) is not SFTTrainer
    model = trainer.accelerator.prepare(trainer.model)  # the autocast wrapper training puts around the forward
    model.train()
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    ours = trainer.compute_loss(model, dict(inputs))
    trls = SFTTrainer.compute_loss(trainer, model, dict(inputs))
    assert ours.item() == pytest.approx(trls.item(), rel=LOSS_RTOL if precision == "fp32" else 1e-3)
    assert trainer._metrics["train"]["mean_token_accuracy"]  # logged by both paths


def test_a_compiled_model_keeps_trls_loss_path(tmp_path):
    """`trainer_args: {torch_compile: true}`: the completion head would call the backbone past the compiled graph
    (and crashed on the compiled wrapper), so a torch.compile'd model trains through TRL's own loss."""
    from trl import SFTTrainer

    from posttrain.stages.sft import SFTStage

    ctx = sft_stage_context(tmp_path, "fp32")
    trainer = SFTStage().build_trainer(ctx)
    model = trainer.model.train()
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    compiled = torch.compile(model, backend="eager")
    assert trainer._uses_completion_loss(model, inputs, False) and not trainer._uses_completion_loss(compiled, inputs, False)
    ours = trainer.compute_loss(compiled, dict(inputs))
    trls = SFTTrainer.compute_loss(trainer, model, dict(inputs))
    assert ours.item() == pytest.approx(trls.item(), rel=LOSS_RTOL)


# ---- DPO: per-token log-probs on completion tokens only ----------------------------------------------------------

def _trl_fused(module):
    from trl.trainer.utils import add_fused_lm_head

    add_fused_lm_head(module, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    return module


@pytest.mark.parametrize("chunk_tokens", [2048, 7], ids=["one chunk", "checkpointed chunks"])
def test_dpo_head_gives_trls_per_token_log_probs_and_gradients(tokenizer, chunk_tokens, monkeypatch):
    """What TRL's DPOTrainer calls, `model(..., labels=L, fused_lm_head=True)`, before and after installing ours."""
    import posttrain.completion_loss as completion

    monkeypatch.setattr(completion, "CHUNK_TOKENS", chunk_tokens)
    inputs = batch(tokenizer)
    labels = inputs.pop("labels")
    net = _trl_fused(model(tokenizer))
    mask = labels[:, 1:] != -100

    def run():
        net.zero_grad()
        out = net(**inputs, labels=labels, fused_lm_head=True)
        (out.log_probs * mask).sum().backward()  # DPO sums each sequence's completion log-probs
        return out, gradients(net)

    trls, trl_grads = run()
    assert completion.install_dpo_head(net)
    ours, our_grads = run()
    torch.testing.assert_close(ours.log_probs[mask], trls.log_probs[mask], rtol=1e-5, atol=1e-5)
    assert float(ours.log_probs.detach()[~mask].abs().max()) == 0.0
    for name in ("entropy", "mean_logits"):
        torch.testing.assert_close(getattr(ours, name)[mask], getattr(trls, name)[mask].float(), rtol=1e-4, atol=1e-4, msg=name)
    assert torch.equal(ours.is_top1[mask], trls.is_top1[mask].bool())
    assert our_grads.keys() == trl_grads.keys()
    for name, grad in trl_grads.items():
        torch.testing.assert_close(our_grads[name], grad, rtol=GRAD_RTOL, atol=GRAD_ATOL, msg=lambda m: f"{name}: {m}")
    # Without fused_lm_head the model is the model: logits for generation and plain forwards.
    assert net(**inputs).logits.shape[-1] == net.config.vocab_size


@pytest.mark.slow  # builds TRL's trainer twice
def test_the_dpo_stages_trainer_computes_trls_loss(tmp_path):
    """Wired into the stage: the dpo stage's trainer (LoRA, reference = the adapter disabled) gives the loss and
    metrics TRL's head gives for the same collated batch."""
    from posttrain.model_store import ModelStore
    from posttrain.progress import ProgressReporter
    from posttrain.stage import BASE, ResolvedInputs, StageContext
    from posttrain.stages.dpo import DPOStage

    def trainer(completion_head: bool):
        config = DPOStage.Config(kind="dpo", data="builtin:assistant_world/feedback", lora={"r": 4}, max_steps=1, batch_size=4,
                                 max_length=64, precision="fp32", save_steps=0, sft_weight=1.0, completion_head=completion_head)
        store = ModelStore(tmp_path / str(completion_head), base="builtin:tiny-chat")
        ctx = StageContext(name="dpo", config=config, stage_dir=tmp_path / str(completion_head) / "dpo", store=store,
                           progress=ProgressReporter(quiet=True), inputs=ResolvedInputs(parent=store.resolve(BASE)),
                           data=DPOStage.prepare_data(config, {}, 0))
        torch.manual_seed(0)
        return DPOStage().build_trainer(ctx)

    losses = []
    for completion_head in (False, True):
        t = trainer(completion_head)
        assert getattr(t.model.get_base_model().forward, "completion_head", False) is completion_head
        model = t.accelerator.prepare(t.model)
        model.train()
        with torch.no_grad():  # the adapter's B starts at zero: give it weight, the same on both sides
            generator = torch.Generator().manual_seed(1)
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
        inputs = t._prepare_inputs(next(iter(t.get_train_dataloader())))
        losses.append((t.compute_loss(model, dict(inputs)).item(), dict(t._metrics["train"])))
    (trl_loss, trl_metrics), (our_loss, our_metrics) = losses
    assert our_loss == pytest.approx(trl_loss, rel=1e-5)
    for name in ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected", "mean_token_accuracy", "entropy"):
        assert our_metrics[name] == pytest.approx(trl_metrics[name], rel=1e-4, abs=1e-5), name
