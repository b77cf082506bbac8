"""Build the tiny Llama: a byte-level BPE tokenizer and a small Llama trained on the shipped support corpus.

No weights can be downloaded on these machines, so Loopline builds its own LLM: small enough to train in about
a minute on two CPU cores, trained long enough on the corpus that its greedy completions are the corpus's kind of
answer rather than noise, and shaped for vLLM's CPU attention (head_dim 64). The result is a Hugging Face
directory (config.json, model.safetensors, tokenizer.json, a chat template) that is signed, registered and
served like any other model version. Built once per machine and cached by a content hash of everything that
determines it (corpus, this file, the library versions).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from loopline_llm.corpus import DATA, EOS

CACHE = Path(os.environ.get("LOOPLINE_CACHE_DIR", Path(__file__).resolve().parents[3] / ".cache"))
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}Customer: {{ m['content'] }}\n"
    "{% elif m['role'] == 'assistant' %}Agent: {{ m['content'] }}" + EOS + "\n"
    "{% else %}{{ m['content'] }}\n{% endif %}{% endfor %}{% if add_generation_prompt %}Agent:{% endif %}"
)


@dataclass(frozen=True)
class TinyConfig:
    vocab_size: int = 512
    hidden_size: int = 128
    intermediate_size: int = 384
    layers: int = 2
    heads: int = 2  # head_dim = 64: vLLM's CPU attention needs >= 64
    max_positions: int = 512
    seq_len: int = 96
    batch: int = 32
    steps: int = 400
    lr: float = 3e-3
    seed: int = 0


def digest(config: TinyConfig = TinyConfig()) -> str:
    import tokenizers  # noqa: PLC0415
    import torch  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    h = hashlib.sha256()
    h.update(DATA.read_bytes())
    h.update(Path(__file__).read_bytes())
    h.update(json.dumps(asdict(config), sort_keys=True).encode())
    h.update(f"{torch.__version__}|{transformers.__version__}|{tokenizers.__version__}".encode())
    return h.hexdigest()[:12]


def cached(config: TinyConfig = TinyConfig(), progress: object = None) -> Path:
    """The built model's directory, building it on first use (once per machine, safe across processes)."""
    path = CACHE / f"tiny-llama-{digest(config)}"
    if (path / "config.json").is_file():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "tiny-llama.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (path / "config.json").is_file():
            if callable(progress):
                progress(f"building the tiny Llama into {path} (once per machine, about a minute)")
            with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
                build(Path(tmp) / "model", config)
                os.replace(Path(tmp) / "model", path)
    return path


def build(out: Path, config: TinyConfig = TinyConfig()) -> dict[str, object]:
    """Train the tokenizer and the model into ``out``; returns the training figures (also in training.json)."""
    import torch  # noqa: PLC0415
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: PLC0415
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: PLC0415

    started = time.monotonic()
    text = DATA.read_text()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=config.vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([text], trainer=trainer)
    eos_id = tok.token_to_id(EOS)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS,  # type: ignore[no-untyped-call]
                                   pad_token=EOS)
    fast.chat_template = CHAT_TEMPLATE

    torch.manual_seed(config.seed)
    ids = torch.tensor(tok.encode(text).ids, dtype=torch.long)
    model_config = LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.layers, num_attention_heads=config.heads, num_key_value_heads=config.heads,
        max_position_embeddings=config.max_positions, bos_token_id=eos_id, eos_token_id=eos_id,
        pad_token_id=eos_id, tie_word_embeddings=True, dtype="float32")
    model = LlamaForCausalLM(model_config)  # type: ignore[no-untyped-call]
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.lr, total_steps=config.steps,
                                                   pct_start=0.1)
    generator = torch.Generator().manual_seed(config.seed)
    model.train()
    loss_value = float("nan")
    for _step in range(config.steps):
        starts = torch.randint(0, len(ids) - config.seq_len - 1, (config.batch,), generator=generator)
        batch = torch.stack([ids[s:s + config.seq_len] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        loss_value = loss.item()
    model.eval()  # type: ignore[no-untyped-call]
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    fast.save_pretrained(out)
    figures = {"final_loss": round(loss_value, 4), "tokens": len(ids), "parameters": int(model.num_parameters()),
               "seconds": round(time.monotonic() - started, 1),
               "corpus_digest": hashlib.sha256(text.encode()).hexdigest()}
    (out / "training.json").write_text(json.dumps({"config": asdict(config), **figures}, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    import sys

    target = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    if target:
        print(build(target))
    else:
        print(cached(progress=print))
