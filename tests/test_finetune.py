"""Fine-tuning: examples from transcripts, the batched training forward, the exact compact
vocabulary loss, training that lowers the loss, export that `load_model` reloads with identical
logits, and the CLI's one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from openai_harmony import Author, Message, Role, SystemContent

from harmony_agent.model import harmony_encoding, load_model
from harmony_agent.model.config import ModelConfig
from harmony_agent.model.train import FinetuneError
from harmony_agent.model.train.data import (
    CompactVocab,
    Example,
    conversation_examples,
    load_examples,
    read_conversations,
    used_tokens,
)
from harmony_agent.model.train.export import export_checkpoint
from harmony_agent.model.train.loop import (
    FinetuneConfig,
    finetune,
    forward_batch,
    init_transformer,
    set_quantization_aware,
    shared_prefix,
    shrink_vocab,
    token_losses,
    zero_rows_outside,
)

ROOT = Path(__file__).parent.parent
TINY = ModelConfig(
    num_hidden_layers=2,
    num_experts=4,
    experts_per_token=2,
    vocab_size=201088,
    hidden_size=32,
    intermediate_size=32,
    head_dim=16,
    num_attention_heads=4,
    num_key_value_heads=2,
    sliding_window=8,
)


def assistant(text: str, channel: str) -> Message:
    return Message.from_role_and_content(Role.ASSISTANT, text).with_channel(channel)


def conversation(a: int = 2, b: int = 3) -> list[Message]:
    system = Message.from_role_and_content(
        Role.SYSTEM, SystemContent.new().with_conversation_start_date("2025-06-01")
    )
    call = assistant(f"print({a} + {b})", "analysis").with_recipient("python")
    tool = Message.from_author_and_content(Author.new(Role.TOOL, "python"), str(a + b))
    return [
        system,
        Message.from_role_and_content(Role.USER, f"What is {a} + {b}?"),
        assistant("Use python.", "analysis"),
        call,
        tool.with_recipient("assistant").with_channel("analysis"),
        assistant(f"{a} + {b} = {a + b}", "final"),
    ]


def write_transcript(path: Path, conversations: list[list[Message]]) -> Path:
    with path.open("w") as f:
        for messages in conversations:
            for m in messages:
                f.write(json.dumps({"type": "message", "message": m.to_dict()}) + "\n")
            f.write(json.dumps({"type": "run", "status": "completed"}) + "\n")
    return path


def trained_text(example: Example) -> str:
    enc = harmony_encoding()
    return enc.decode([t for t, keep in zip(example.tokens, example.loss, strict=True) if keep])


# --- examples ------------------------------------------------------------------------------------


def test_loss_covers_what_the_model_generates() -> None:
    (example,) = conversation_examples(conversation())
    assert trained_text(example) == (
        "<|channel|>analysis<|message|>Use python.<|end|>"
        "<|start|>assistant to=python<|channel|>analysis<|message|>print(2 + 3)<|call|>"
        "<|channel|>final<|message|>2 + 3 = 5<|return|>"
    )
    # The prompt the agent renders ends with `<|start|>assistant`: not trained on.
    assert harmony_encoding().decode(example.tokens).endswith("2 + 3 = 5<|return|>")


def test_each_turn_is_an_example_without_earlier_analysis() -> None:
    first = conversation(2, 3)
    second = conversation(4, 5)[1:]  # same conversation, a second user turn
    one, two = conversation_examples([*first, *second])
    assert trained_text(one).endswith("2 + 3 = 5<|return|>")
    assert trained_text(two).endswith("4 + 5 = 9<|return|>")
    text = harmony_encoding().decode(two.tokens)
    assert "Use python." in text and text.count("Use python.") == 1  # turn 1's analysis dropped
    assert "print(2 + 3)" not in text and "2 + 3 = 5" in text  # so are python calls


def test_concatenated_transcripts_are_separate_conversations(tmp_path: Path) -> None:
    path = write_transcript(tmp_path / "t.jsonl", [conversation(1, 2), conversation(3, 4)])
    assert len(read_conversations(path)) == 2
    examples = load_examples([path])
    assert [trained_text(e).rsplit("= ", 1)[1] for e in examples] == ["3<|return|>", "7<|return|>"]


def test_transcripts_that_do_not_train_are_errors_naming_the_place(tmp_path: Path) -> None:
    no_final = write_transcript(tmp_path / "a.jsonl", [conversation()[:-1]])
    with pytest.raises(FinetuneError, match=r"a\.jsonl: conversation 1: no final answer"):
        load_examples([no_final])
    broken = tmp_path / "b.jsonl"
    broken.write_text('{"type": "message", "message": {"role": "user"}}\n')
    with pytest.raises(FinetuneError, match=r"b\.jsonl:1: not a transcript record"):
        load_examples([broken])
    with pytest.raises(FinetuneError, match="cannot read"):
        load_examples([tmp_path / "missing.jsonl"])


# --- forward and loss ----------------------------------------------------------------------------


def random_model(config: ModelConfig, seed: int = 0) -> torch.nn.Module:
    tf = init_transformer(config, seed=seed)
    with torch.no_grad():  # nonzero biases, sinks and norms: a zero init hides bugs
        for p in tf.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)) * 0.05)
    return tf


def test_batched_forward_matches_the_model_row_by_row() -> None:
    config = ModelConfig(**{**TINY.to_reference_json(), "vocab_size": 300})
    tf = random_model(config)
    tokens = torch.randint(0, 300, (3, 30))
    tokens[:, :17] = tokens[0, :17]  # a shared prompt, longer than the sliding window
    with torch.no_grad():
        ref = torch.stack([tf(row) for row in tokens])
        torch.testing.assert_close(forward_batch(tf, tokens), ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(forward_batch(tf, tokens, 16), ref[:, 16:], atol=1e-5, rtol=0)
    mask = torch.zeros(3, 30)
    mask[1, 20] = 1
    assert shared_prefix(tokens, mask) == 17
    mask[0, 5] = 1
    assert shared_prefix(tokens, mask) == 4


def test_compact_vocabulary_loss_equals_the_full_softmax() -> None:
    tf = random_model(TINY)
    keep = [5, 17, 200006, 200008, 9000]
    zero_rows_outside(tf, keep)
    tokens = torch.tensor([200006, 17, 5, 9000, 200008, 5])
    with torch.no_grad():
        full = token_losses(tf(tokens)[:-1], tokens[1:])
        vocab = CompactVocab(keep, TINY.vocab_size)
        shrink_vocab(tf, vocab)
        ids = vocab.compact(tokens)
        compact = token_losses(forward_batch(tf, ids[None])[0, :-1], ids[1:], vocab.zero_rows)
    torch.testing.assert_close(compact, full, atol=1e-5, rtol=1e-6)


# --- training and export -------------------------------------------------------------------------


def tiny_trained(steps: int, qat: int = 0) -> tuple[torch.nn.Module, CompactVocab, list[float]]:
    torch.manual_seed(0)
    examples = [e for a in range(6) for e in conversation_examples(conversation(a, a + 1))]
    vocab = CompactVocab(used_tokens(examples, harmony_encoding()), TINY.vocab_size)
    tf = init_transformer(TINY, seed=0)
    zero_rows_outside(tf, vocab.ids.tolist())
    shrink_vocab(tf, vocab)
    settings = FinetuneConfig(
        steps=steps, batch_size=3, grad_accum=2, lr=1e-2, warmup=2, quantization_aware_steps=qat
    )
    stats = finetune(tf, examples, settings, vocab=vocab)
    return tf, vocab, stats.losses


def expanded_logits(tf: torch.nn.Module, vocab: CompactVocab, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        compact = forward_batch(tf, vocab.compact(torch.tensor(tokens))[None])[0]
    full = torch.zeros(len(tokens), vocab.vocab_size)
    full[:, vocab.ids] = compact
    return full


def test_finetuning_lowers_the_loss_and_the_export_reloads_exactly(tmp_path: Path) -> None:
    tf, vocab, losses = tiny_trained(steps=25)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    tokens = conversation_examples(conversation(7, 8))[0].tokens
    want = expanded_logits(tf, vocab, tokens)

    dense = export_checkpoint(tf, tmp_path / "dense", vocab=vocab, mxfp4=False, dtype=torch.float32)
    got = load_model(dense).logits(tokens)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)

    # MXFP4 export: the same logits as the model computing with its experts rounded to MXFP4.
    packed = export_checkpoint(tf, tmp_path / "hf", vocab=vocab, layout="hf", dtype=torch.float32)
    set_quantization_aware(tf, True)
    want_q = expanded_logits(tf, vocab, tokens)
    set_quantization_aware(tf, False)
    model = load_model(packed)
    assert model.transformer.block[0].mlp.experts.__class__.__name__ == "MXFP4Experts"
    torch.testing.assert_close(model.logits(tokens), want_q, atol=1e-5, rtol=0)


def test_quantization_aware_steps_leave_dense_weights_to_export() -> None:
    tf, _, losses = tiny_trained(steps=6, qat=3)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert type(tf.block[0].mlp.experts).__name__ == "DenseExperts"


# --- CLI -----------------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harmony_agent.model.train.cli", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_cli_trains_from_scratch_and_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    data = write_transcript(tmp_path / "t.jsonl", [conversation(a, 2 * a) for a in range(4)])
    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY.to_reference_json()))
    proc = run_cli(str(data), "--init", str(config), "--compact-vocab", "--tie-embeddings",
                   "--steps", "3",
                   "--batch-size", "2", "--out", str(tmp_path / "out"),
                   "--compact-out", str(tmp_path / "c.safetensors"), "--threads", "1")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "trained 3 steps" in proc.stderr
    assert load_model(tmp_path / "out").logits([200006]).shape == (1, TINY.vocab_size)
    assert (tmp_path / "c.safetensors").stat().st_size < 200_000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.jsonl", "--init", "tiny", "--out", "x"], "missing.jsonl: no such transcript"),
        (["DATA", "--init", "tiny", "--compact-vocab", "--out", "x"], "token ids must be in"),
        (["DATA", "--model", "/nonexistent", "--out", "x"], "no such checkpoint folder"),
        (["DATA", "--init", "tiny", "--adapter-only", "--out", "x"], "--adapter-only needs"),
    ],
)
def test_cli_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    data = write_transcript(tmp_path / "t.jsonl", [conversation()])
    proc = run_cli(*[str(data) if a == "DATA" else a for a in args])
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert message in proc.stderr
