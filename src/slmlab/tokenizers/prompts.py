"""Prompts. SpeechLM's: a text template with one `<|audio|>` placeholder, expanded to one token per
audio embedding, then the transcript to learn.

    "<|audio|> transcribe:", n audio embeddings, target ids
      -> [bos] + ids("") + [<|audio|>] x n + ids(" transcribe:") + target
    batch: input_ids [B, L], attention_mask [B, L], labels [B, L] (-100 wherever there is no loss)

`SpeechLM` (`models/speechlm.py`) writes its audio embeddings over the placeholders in order.

Spirit LM's few-shot ASR and TTS prompts (`few_shot_pieces`): example pairs from the train split, then the
query, each piece after its modality switch.
"""

from __future__ import annotations

import torch

AUDIO_TOKEN = "<|audio|>"


def prompt_batch(
    tokenizer,
    template: str,
    audio_tokens: list[int],
    targets: list[list[int]] | None = None,
    padding_side: str = "right",
) -> dict[str, torch.Tensor]:
    """Rows of bos + template with its `<|audio|>` repeated audio_tokens[i] times (+ targets[i]),
    padded. Replaces a multimodal processor's placeholder expansion (Qwen2-Audio's `<|AUDIO|>`).

    template: e.g. "<|audio|> transcribe:"; targets: token ids to learn (transcript + eos).
    -> input_ids [B, L], attention_mask [B, L], labels [B, L] (-100 on bos, prompt, audio and
    padding). Right padding for training; left padding for `generate`.
    """
    if template.count(AUDIO_TOKEN) != 1:
        raise ValueError(f"the prompt template must hold {AUDIO_TOKEN} exactly once: {template!r}")
    before, after = template.split(AUDIO_TOKEN)
    before_ids = tokenizer.encode(before, bos=True, eos=False)
    after_ids = tokenizer.encode(after, bos=False, eos=False)
    audio_id = tokenizer.hf.convert_tokens_to_ids(AUDIO_TOKEN)
    rows, label_rows = [], []
    for i, n in enumerate(audio_tokens):
        prompt = before_ids + [audio_id] * n + after_ids
        target = targets[i] if targets is not None else []
        rows.append(prompt + target)
        label_rows.append([-100] * len(prompt) + target)
    width = max(map(len, rows))
    batch = {
        "input_ids": torch.full((len(rows), width), tokenizer.pad_id),
        "attention_mask": torch.zeros(len(rows), width, dtype=torch.long),
        "labels": torch.full((len(rows), width), -100),
    }
    for i, (row, labels) in enumerate(zip(rows, label_rows)):
        span = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
        batch["input_ids"][i, span] = torch.tensor(row)
        batch["labels"][i, span] = torch.tensor(labels)
        batch["attention_mask"][i, span] = 1
    return batch


def few_shot_pieces(
    examples: list[tuple[object, str]], query: object, direction: str
) -> list[tuple[str, object]]:
    """Spirit LM's few-shot prompt (the paper's ASR and TTS protocol) as interleaved pieces, for
    `SpiritLMTask.prompt_ids`: the examples in order, then the query, whose output modality follows.

    examples: (speech, its text) pairs, speech a waveform or frame-level streams; direction "asr":
      [SPEECH]speech_1[TEXT]text_1 ... [SPEECH]query  (then [TEXT], the transcript to generate)
    direction "tts" (query a text):
      [TEXT]text_1[SPEECH]speech_1 ... [TEXT]query  (then [SPEECH], the speech to generate)
    """
    if direction == "asr":
        pairs = [(("SPEECH", speech), ("TEXT", text)) for speech, text in examples]
        last = ("SPEECH", query)
    elif direction == "tts":
        pairs = [(("TEXT", text), ("SPEECH", speech)) for speech, text in examples]
        last = ("TEXT", query)
    else:
        raise ValueError(f"unknown few-shot direction {direction!r}; valid: asr, tts")
    return [piece for pair in pairs for piece in pair] + [last]
