"""Fine-tuning gpt-oss on harmony transcripts: full or LoRA, fp32 or bf16, exported for load_model.

- `data`: transcripts -> examples (tokens and which of them are trained), the compact vocabulary;
- `loop`: the model prepared for training, the batched forward, the loss and the training loop;
- `export`: the trained model written back as a checkpoint (or a compact file);
- `lora`: low-rank adapters; `cli`: `harmony-agent finetune`.
"""


class FinetuneError(Exception):
    """Training data or settings that cannot be used; the message names the file and line."""
