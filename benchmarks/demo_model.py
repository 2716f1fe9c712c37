"""Make and measure the demo model (model/demo/demo.safetensors).

    python benchmarks/demo_model.py data --out /tmp/demo       # transcripts (train.jsonl)
    python benchmarks/demo_model.py train --data /tmp/demo/train.jsonl  # -> demo.safetensors
    python benchmarks/demo_model.py eval [--count 100] [--dense-weights FILE]  # via the agent

`data` renders conversations of the synthetic task (`model.demo.task`: one to three questions,
some outside the task) with the agent's own system and developer messages (`Agent.preamble()`
for the demo tools, current date `DEMO_CURRENT_DATE`); the training reader renders each turn
with the earlier turns as the agent shows them, so the model is trained on exactly what the
agent shows it. `train` trains the demo shape from scratch on CPU (compact vocabulary, fp32,
dense experts, then a few quantisation-aware steps) and writes the compact file. `eval` runs
held-out questions through `Agent` with the sandboxed python tool at temperature 0 and prints
three figures: single-question accuracy, follow-up accuracy (conversations of 2 and 3 questions,
every answer right) and the share of questions outside the task answered with the fixed honest
sentence and no tool call; then the decode speed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEMO_CONFIG = {
    "num_hidden_layers": 4,
    "num_experts": 8,
    "experts_per_token": 2,
    "vocab_size": 201088,
    "hidden_size": 128,
    "intermediate_size": 128,
    "swiglu_limit": 7.0,
    "head_dim": 32,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "sliding_window": 64,
    "initial_context_length": 4096,
    "rope_theta": 150000.0,
    "rope_scaling_factor": 32.0,
    "rope_ntk_alpha": 1.0,
    "rope_ntk_beta": 32.0,
}


def demo_agent(model: object, *, python: bool = True, current_date: str | None = None) -> object:
    """The agent the demo model was trained for: the python tool and `convert_units`."""
    from harmony_agent.agent import Agent
    from harmony_agent.model import Sampling
    from harmony_agent.model.demo.task import convert_units
    from harmony_agent.tools import function_tool

    tools: list = [function_tool(convert_units)]
    if python:
        from harmony_agent.tools.python_tool import PythonTool

        tools.insert(0, PythonTool())
    return Agent(model, tools=tools, sampling=Sampling(temperature=0), current_date=current_date,
                 max_steps=4, max_turn_tokens=256)  # fmt: skip


def cmd_data(args: argparse.Namespace) -> None:
    from harmony_agent.model import ScriptedModel
    from harmony_agent.model.demo.task import write_transcripts

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def preamble(date: str) -> list:
        agent = demo_agent(ScriptedModel([]), python=True, current_date=date)
        return agent.preamble()  # type: ignore[attr-defined]

    path = out / "train.jsonl"
    write_transcripts(
        str(path), args.count, seed=args.seed, preamble=preamble, max_turns=args.max_turns
    )
    print(f"{args.count} conversations -> {path}")


def cmd_train(args: argparse.Namespace) -> None:
    if args.resume and not os.path.isfile(args.resume):  # before minutes of loading the data
        raise SystemExit(f"--resume {args.resume}: no such file")
    import torch

    from harmony_agent.encoding import harmony_encoding
    from harmony_agent.model.config import ModelConfig
    from harmony_agent.model.train.data import CompactVocab, load_examples, used_tokens
    from harmony_agent.model.train.export import save_compact
    from harmony_agent.model.train.loop import (
        FinetuneConfig,
        finetune,
        init_transformer,
        progress_printer,
        shrink_vocab,
        tie_embeddings,
        zero_rows_outside,
    )

    torch.set_num_threads(args.threads)
    encoding = harmony_encoding()
    examples = load_examples([args.data], encoding=encoding)
    config = ModelConfig(**DEMO_CONFIG)
    # Another stage's data (--vocab-data) shares the vocabulary, so either can --resume the other.
    kept = used_tokens(examples, encoding) | transcript_tokens(args.vocab_data, encoding)
    vocab = CompactVocab(kept, config.vocab_size)
    tf = init_transformer(config, seed=args.seed)
    zero_rows_outside(tf, vocab.ids.tolist())
    shrink_vocab(tf, vocab)
    tie_embeddings(tf)
    fix_number_rows(tf, vocab, encoding, args.embedding_std)
    if args.resume:  # continue from an earlier run on the same data
        saved = _resume_state(args.resume)
        if not torch.equal(saved["ids"], vocab.ids):
            raise SystemExit(f"{args.resume}: trained on another vocabulary")
        tf.load_state_dict(saved["state"])
        tie_embeddings(tf)
    mean = sum(len(e.tokens) for e in examples) / len(examples)
    print(f"{len(examples)} examples, {len(vocab)} kept tokens, {mean:.0f} tokens/example")
    settings = FinetuneConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=50,
        seed=args.seed,
        quantization_aware_steps=args.qat_steps,
        bucket_by_length=args.bucket,
    )
    show, close = progress_printer(settings.steps, every=25)

    def on_step(step: int, loss: float, tps: float) -> None:
        show(step, loss, tps)
        if args.dense_out and step % 250 == 0:  # a run cut short still leaves weights
            torch.save({"state": tf.state_dict(), "ids": vocab.ids, "step": step}, args.dense_out)

    try:
        stats = finetune(tf, examples, settings, vocab=vocab, on_step=on_step)
    finally:
        close()
    if args.dense_out:
        torch.save({"state": tf.state_dict(), "ids": vocab.ids}, args.dense_out)
    meta = {
        "trained": json.dumps({
            "command": " ".join(sys.argv), "seconds": round(stats.seconds, 1),
            "final_loss": round(sum(stats.losses[-20:]) / len(stats.losses[-20:]), 5),
            "tokens_per_second": round(stats.tokens_per_second),
        }),
    }  # fmt: skip
    path = save_compact(tf, vocab, args.out, metadata=meta)
    size = path.stat().st_size / 1e6
    print(f"trained in {stats.seconds:.0f} s ({stats.tokens_per_second:,.0f} tok/s), "
          f"loss {stats.losses[-1]:.4f} -> {path} ({size:.2f} MB)")  # fmt: skip


def transcript_tokens(paths: list[str], encoding: Any) -> set[int]:
    """Every token of the conversations of transcript files: each rendered once, whole (which
    holds the tokens of all its examples, and is cheaper than making them)."""
    from openai_harmony import Conversation

    from harmony_agent.model.train.data import read_conversations

    tokens: set[int] = set()
    for path in paths:
        for messages in read_conversations(path):
            conversation = Conversation.from_messages(messages)
            tokens.update(encoding.render_conversation_for_training(conversation))
    return tokens


def fix_number_rows(tf: Any, vocab: Any, encoding: Any, std: float) -> None:
    """Draw every (tied) embedding row at `std`, build the rows of number tokens from their
    digits and freeze them.

    The model copies numbers it has rarely or never seen (900 three-digit tokens, a handful of
    examples each) from the question into its code and from the tool's result into its answer.
    Trained rows of rare tokens stay small and unlike the frequent ones, so number rows are
    frozen. Frozen *random* rows (the previous recipe) must pass through a 32-wide attention head
    to be copied: a rank-32 view of 1110 random 128-wide rows, which picks a near neighbour now
    and then (the second group of a six-digit result, mostly). Here a number's row is the sum of
    one code per place, right-aligned: 10 digits for the units, 10 digits or "none" for the tens
    and hundreds: 32 orthonormal codes, so every number lies in their 32-dimensional span, which
    one 32-wide head can copy exactly, all rows have one norm, and the tied unembedding scores
    the right number 3 and any other at most 2 (one matching place fewer).
    """
    import torch

    g = torch.Generator().manual_seed(1)
    weight = tf.embedding.weight
    dim = weight.shape[1]
    numbers = torch.zeros(len(vocab), dtype=torch.bool)
    basis = torch.linalg.qr(torch.randn(dim, 32, generator=g, dtype=torch.float64))[0].float()
    norm = std * dim**0.5 / 3**0.5  # as long as a random row drawn at `std`
    rows = torch.randn(weight.shape, generator=g) * std
    for i, token in enumerate(vocab.ids.tolist()):
        text = encoding.decode([token])
        if not (text.isascii() and text.isdigit()):
            continue
        if len(text) > 3:
            raise SystemExit(f"number token {text!r}: more than 3 digits")
        digits = [int(c) for c in reversed(text)]
        codes = [digits[0], *(10 + 11 * (p - 1) + (digits[p] if p < len(digits) else 10)
                              for p in (1, 2))]  # fmt: skip
        rows[i] = basis[:, codes].sum(1) * norm
        numbers[i] = True
    with torch.no_grad():
        weight.copy_(rows)
    keep = (~numbers).float()[:, None]
    weight.register_hook(lambda grad: grad * keep)


def cmd_eval(args: argparse.Namespace) -> None:
    import torch

    from harmony_agent.model.demo import DEMO_CURRENT_DATE, load_demo_model
    from harmony_agent.model.demo.task import (
        held_out_conversations,
        held_out_other,
        held_out_tasks,
        training_questions,
    )

    torch.set_num_threads(args.threads)
    if args.dense_weights:
        model = _dense_model(args.dense_weights)
    else:
        model = load_demo_model(args.weights)
    exclude = training_questions()
    agent = demo_agent(model, python=not args.no_python, current_date=DEMO_CURRENT_DATE)
    usage = [0, 0.0]  # tokens generated, model seconds

    def share(conversations: list, what: str) -> None:
        right = sum(ask(agent, tasks, usage, args.verbose) for tasks in conversations)
        print(f"{what}: {right}/{len(conversations)} = {right / len(conversations):.1%}")

    with agent:  # type: ignore[attr-defined]
        single = held_out_tasks(args.count, seed=args.seed, exclude=exclude)
        share([[t] for t in single], "single-question held-out accuracy")
        for turns in (2, 3):
            conversations = held_out_conversations(args.conversations, turns, exclude=exclude)
            share(conversations, f"{turns}-question conversations, every answer right")
        other = held_out_other(args.other, exclude=exclude)
        share([[t] for t in other], "held-out questions outside the task, honest answer, no call")
        follow = held_out_tasks(len(other), seed=args.seed + 1, exclude=exclude)
        share([[t, o] for t, o in zip(follow, other, strict=True)],
              "the same as a follow-up (after a task question), both answers right")  # fmt: skip
    print(f"{usage[0] / usage[1]:.0f} tok/s generated in the agent (prefill included)")
    prompt = agent.preamble()  # type: ignore[attr-defined]
    print(f"decode {decode_speed(model, prompt):.0f} tok/s (batch 1, KV cache, "
          f"{torch.get_num_threads()} thread(s))")  # fmt: skip


def ask(agent: Any, tasks: list, usage: list, verbose: bool = False) -> bool:
    """Ask `tasks`' questions in one conversation: True when every answer is the expected one,
    after exactly the expected tool call (none for a question outside the task)."""
    history: list = []
    for task in tasks:
        result = agent.run(task.question, history=history)
        turn = result.messages[len(history) :]
        calls = [m.recipient for m in turn if m.recipient not in (None, "assistant")]
        expected = [task.recipient] if task.recipient else []
        ok = result.final is not None and result.final.strip() == task.answer and calls == expected
        usage[0] += result.usage.output_tokens
        usage[1] += result.usage.model_seconds
        if not ok or verbose:
            mark = "ok " if ok else "BAD"
            print(f"{mark} turn {tasks.index(task) + 1} {task.question!r} -> {result.final!r} "
                  f"({result.status}; calls {calls}; want {task.answer!r})")  # fmt: skip
        if not ok:
            return False
        history = result.messages
    return True


def decode_speed(model: object, preamble: list, n: int = 200) -> float:
    """Tokens per second of greedy decoding alone, after a prefilled harmony prompt."""
    from openai_harmony import Conversation, Message, Role

    from harmony_agent.model import Sampling, harmony_encoding

    enc = harmony_encoding()
    messages = [*preamble, Message.from_role_and_content(Role.USER, "What is 37 * 41 + 5?")]
    prompt = enc.render_conversation_for_completion(
        Conversation.from_messages(messages), Role.ASSISTANT
    )
    greedy = Sampling(temperature=0)
    list(model.generate(prompt, stop_tokens=set(), max_tokens=1, sampling=greedy))  # type: ignore[attr-defined]
    started = time.perf_counter()
    count = len(list(model.generate(prompt, stop_tokens=set(), max_tokens=n, sampling=greedy)))  # type: ignore[attr-defined]
    return (count - 1) / (time.perf_counter() - started)  # the first token comes from the prefill


def _resume_state(path: str) -> dict[str, Any]:
    """A --dense-out file, or a compact file (the shipped model: its MXFP4 experts dequantised,
    exact), as {"state": Transformer state dict, "ids": kept vocabulary}."""
    import torch

    if not path.endswith(".safetensors"):
        return torch.load(path)
    from safetensors.torch import load_file

    from harmony_agent.model.checkpoint import repack
    from harmony_agent.model.train.export import state_name

    tensors = load_file(path)
    if "vocab_ids" not in tensors:
        raise SystemExit(f"--resume {path}: not a compact model file (no vocab_ids)")
    ids = tensors.pop("vocab_ids").long()
    # sorted by name, each expert's .blocks comes before its .scales, as repack needs
    dense = repack(iter(sorted(tensors.items())), False, torch.float32)
    return {"state": {state_name(n): t for n, t in dense}, "ids": ids}


def _dense_model(path: str) -> object:
    """The fp32 dense-expert weights saved by `train --dense-out`, as a loaded model (no MXFP4)."""
    import tempfile

    import torch

    from harmony_agent.model import load_model
    from harmony_agent.model.config import ModelConfig
    from harmony_agent.model.train.data import CompactVocab
    from harmony_agent.model.train.export import export_checkpoint
    from harmony_agent.model.transformer import Transformer

    saved = torch.load(path)
    vocab = CompactVocab(saved["ids"].tolist(), DEMO_CONFIG["vocab_size"])
    tf = Transformer(ModelConfig(**{**DEMO_CONFIG, "vocab_size": len(vocab)}))
    tf.load_state_dict(saved["state"])
    folder = tempfile.mkdtemp(prefix="demo-dense-")
    export_checkpoint(tf, folder, vocab=vocab, mxfp4=False, dtype=torch.float32)
    return load_model(folder)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data")
    d.add_argument("--out", required=True)
    d.add_argument("--count", type=int, default=6000)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--max-turns", type=int, default=3, help="questions per conversation, at most")
    t = sub.add_parser("train")
    t.add_argument("--data", required=True)
    t.add_argument("--out", default=str(ROOT / "model" / "demo" / "demo.safetensors"))
    t.add_argument("--dense-out", help="also save the dense fp32 compact weights (torch.save)")
    t.add_argument("--steps", type=int, default=1200)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--qat-steps", type=int, default=100)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--embedding-std", type=float, default=0.3)
    t.add_argument("--resume", help="a --dense-out or compact file to continue training from")
    t.add_argument("--vocab-data", nargs="*", default=[],
                   help="transcripts whose tokens it keeps too (a later stage's)")  # fmt: skip
    t.add_argument("--bucket", action="store_true", help="batch examples of similar lengths")
    t.add_argument("--threads", type=int, default=2)
    e = sub.add_parser("eval")
    e.add_argument("--weights", help="a compact file (default: the shipped one)")
    e.add_argument("--count", type=int, default=100, help="single questions")
    e.add_argument("--conversations", type=int, default=50, help="of 2 and of 3 questions each")
    e.add_argument("--other", type=int, default=100, help="questions outside the task")
    e.add_argument("--seed", type=int, default=10_000)
    e.add_argument("--dense-weights", help="the --dense-out file of train: accuracy before MXFP4")
    e.add_argument("--no-python", action="store_true")
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--verbose", action="store_true")
    args = p.parse_args()
    {"data": cmd_data, "train": cmd_train, "eval": cmd_eval}[args.cmd](args)


if __name__ == "__main__":
    main()
