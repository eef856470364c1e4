"""`model=spiritlm_base` / `model=spiritlm_expressive`: one LM over text BPE and speech tokens, trained on
speech-only, text-only and word-level interleaved sequences, generating in a chosen output modality."""

from __future__ import annotations

import random
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers.generation.stopping_criteria import EosTokenCriteria, StoppingCriteriaList

from slmlab.constants import SAMPLE_RATE, TOKEN_RATES
from slmlab.data.batching import pad_stack
from slmlab.models.spiritlm import generate_in_modality
from slmlab.tasks.base import SLMTask
from slmlab.tokenizers.interleaved import KINDS, InterleavedSequences, InterleavedVocabulary
from slmlab.tokenizers.prompts import few_shot_pieces
from slmlab.tokenizers.units import KIND_OF

LOSS_NAMES = {"Hu": "unit_loss", "Pi": "pitch_loss", "St": "style_loss"}


class SwitchCriteria(EosTokenCriteria):
    """Ends generation at a modality switch. A type of its own: transformers' generate replaces its eos
    criterion with a custom one of the same type, and would then run past eos."""


class SpiritLMTask(SLMTask):
    """batch: frame-level speech tokens `units` [B, T] at 25 Hz (Expressive also `pitch` at 12.5 Hz and `style`
    at 1 Hz), `words` timings and `text`. Each training step draws a sequence kind per utterance (speech,
    text or interleaved, by `interleave.ratios`) and fresh spans; the loss is next-token cross-entropy over
    every token but bos, logged apart for text tokens and speech tokens (nats per token).

    net: a partial of `build_llama_lm` (sizes from `model/spiritlm/size`), or of `convert.spiritlm.load_release_lm`
    (a released checkpoint); speech_streams: the speech token streams in the vocabulary (Base: units;
    Expressive: units, pitch, style); layout: the token ids, `slmlab` (ours) or `release` (the released
    checkpoints', read from their tokenizer; `model/spiritlm/layout`); generation: `generate` keywords.
    """

    capabilities = frozenset(
        {
            "transcribe",
            "synthesise",
            "score_texts",
            "score_speech",
            "continue_speech",
            "resynthesise",
        }
    )

    @property
    def speaks(self) -> bool:
        """Only with a unit vocoder (`tokenizer.speech.decoder`) do its speech tokens become audio."""
        return self.speech_tokenizer.decoder is not None

    @classmethod
    def fsdp_block_classes(cls) -> set[type]:
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer

        return {LlamaDecoderLayer}

    def __init__(
        self,
        net,
        tokenizer,
        speech_tokenizer,
        optimizer,
        scheduler=None,
        speech_streams: list[str] = ("units",),
        layout: str = "slmlab",
        interleave: dict | None = None,
        generation: dict | None = None,
        sample_count: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__(optimizer, scheduler)
        if list(speech_streams)[:1] != ["units"] or not set(speech_streams) <= set(KIND_OF):
            raise ValueError(
                f"speech_streams must start with units and use units/pitch/style; got {list(speech_streams)}"
            )
        self.tokenizer, self.speech_tokenizer, self.streams = (
            tokenizer,
            speech_tokenizer,
            list(speech_streams),
        )
        self.vocab = InterleavedVocabulary(
            tokenizer, speech_tokenizer, [KIND_OF[s] for s in self.streams], layout
        )
        self.sequences = InterleavedSequences(self.vocab, **(interleave or {}))
        self.net = net(vocab_size=len(self.vocab), pad_token_id=tokenizer.pad_id)
        self.generation = {
            "do_sample": True,
            "temperature": 0.8,
            "top_p": 0.95,
            "max_new_tokens": 200,
            **(generation or {}),
        }
        self.sample_rate, self.sample_count, self.seed = SAMPLE_RATE, sample_count, seed
        self.rng = random.Random(seed)
        self._samples: list[str] = []

    # -- sequences and losses --------------------------------------------------------------------------
    def item_streams(self, batch: dict, i: int) -> dict[str, torch.Tensor]:
        return {
            name: batch[name][i, : int(batch[f"{name}_lengths"][i])].cpu() for name in self.streams
        }

    def token_losses(self, sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequences of ids -> (cross-entropy per predicted token [B, L-1], its target ids with -100 on padding)."""
        ids, lengths = pad_stack([torch.tensor(s) for s in sequences], self.tokenizer.pad_id)
        ids, lengths = ids.to(self.device), lengths.to(self.device)
        mask, labels = self.lm_labels(ids, lengths)
        logits = self.net(input_ids=ids, attention_mask=mask).logits[:, :-1]
        targets = labels[:, 1:]
        return F.cross_entropy(logits.transpose(1, 2).float(), targets, reduction="none"), targets

    def log_means(
        self, stage: str, losses: torch.Tensor, masks: dict[str, torch.Tensor], **kwargs
    ) -> None:
        """Mean loss over each mask's tokens, weighted by its token count across the epoch."""
        for name, mask in masks.items():
            count = int(mask.sum())
            if count:
                self.log(f"{stage}/{name}", losses[mask].mean(), batch_size=count, **kwargs)

    def type_masks(self, targets: torch.Tensor, prefix: str = "") -> dict[str, torch.Tensor]:
        masks = {
            f"{prefix}text_loss": self.vocab.is_text(targets),
            f"{prefix}speech_loss": self.vocab.is_speech(targets),
        }
        if len(self.streams) > 1:  # Expressive: each speech token kind apart
            masks.update(
                {
                    f"{prefix}{LOSS_NAMES[kind]}": self.vocab.kind_mask(targets, kind)
                    for kind in self.vocab.kinds
                }
            )
        return masks

    # -- training and evaluation -----------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        sequences = [
            self.sequences.build(
                batch["text"][i], batch["words"][i], self.item_streams(batch, i), self.rng
            )[0]
            for i in range(len(batch["id"]))
        ]
        losses, targets = self.token_losses(sequences)
        valid = targets != -100
        batch["num_tokens"] = sum(len(s) for s in sequences)  # LM positions (throughput)
        loss = losses[valid].mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=int(valid.sum()))
        self.log_means("train", losses, self.type_masks(targets))
        self.log(
            "train/tokens_per_sequence", valid.sum(1).float().mean(), batch_size=len(sequences)
        )
        return loss

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")
        if batch_idx == 0:
            self._samples = self.samples(batch)

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")

    def _evaluate(self, batch, stage: str) -> None:
        """Every utterance three ways: speech-only (`speech_loss` and per kind), text-only (`text_loss`,
        comparable to `model=text_lm`'s loss: same BPE tokens and eos), and interleaved with spans fixed
        by its id (`interleaved_loss`); `loss` is the mean over all their tokens."""
        sequences, kinds = [], []
        for i, utterance_id in enumerate(batch["id"]):
            streams = self.item_streams(batch, i)
            for kind in ("speech", "text", "interleaved"):
                sequences.append(
                    self.sequences.build(
                        batch["text"][i],
                        batch["words"][i],
                        streams,
                        random.Random(utterance_id),
                        kind=kind,
                        count=False,
                    )[0]
                )
                kinds.append(kind)
        losses, targets = self.token_losses(sequences)
        valid = targets != -100
        of_kind = {
            kind: torch.tensor([k == kind for k in kinds], device=self.device)[:, None] & valid
            for kind in ("speech", "text", "interleaved")
        }
        masks = {
            "loss": valid,
            "text_loss": of_kind["text"] & self.vocab.is_text(targets),
            "interleaved_loss": of_kind["interleaved"],
        }
        masks.update(
            {
                name: mask & of_kind["speech"]
                for name, mask in self.type_masks(targets).items()
                if name != "text_loss"
            }
        )
        self.log_means(stage, losses, masks, sync_dist=True, prog_bar=False)

    def on_train_epoch_start(self) -> None:
        self.sequences.counts.clear()

    def on_train_epoch_end(self) -> None:
        """Fractions of the sequence kinds built this epoch (and of utterances that had no word timings)."""
        total = sum(v for k, v in self.sequences.counts.items() if k in KINDS)
        for kind, count in self.sequences.counts.items():
            self.log(f"train/sequences_{kind}", count / max(total, 1))

    def on_validation_epoch_end(self) -> None:
        if self._samples and not self.trainer.sanity_checking:
            self.log_text("samples/val", "\n\n".join(self._samples))

    def samples(self, batch: dict) -> list[str]:
        """Greedy text continuations of two-word prompts, and transcripts prompted as [SPEECH]units[TEXT]."""
        lines = []
        for i in range(min(self.sample_count, len(batch["id"]))):
            prompt = " ".join(batch["text"][i].split()[:2])
            continued = self.generate(
                [("TEXT", prompt)], "TEXT", do_sample=False, max_new_tokens=24
            )["text"]
            heard = self.generate(
                [("SPEECH", self.item_streams(batch, i))],
                "TEXT",
                do_sample=False,
                max_new_tokens=24,
            )["text"]
            lines.append(
                f"**{prompt}** → {continued}  \n**speech of** {batch['text'][i]} → {heard}"
            )
        return lines

    # -- generation and export ------------------------------------------------------------------------
    def prompt_ids(self, pieces: list[tuple[str, object]], modality: str) -> list[int]:
        """pieces: ("TEXT", str) or ("SPEECH", waveform [S] at 16 kHz | frame-level streams dict), in order.
        -> bos, each piece after its switch, then the output modality's switch when it differs from the
        last piece's (ARBITRARY: the model chooses)."""
        ids, last = [self.tokenizer.bos_id], None
        for modality_in, content in pieces:
            if modality_in == "TEXT":
                ids += [self.vocab.text_id, *self.tokenizer.encode(content, bos=False, eos=False)]
            else:
                streams = (
                    content
                    if isinstance(content, dict)
                    else self.speech_tokenizer.encode_streams(content, self.streams)
                )
                ids += [self.vocab.speech_id, *self.sequences.speech(streams)]
            last = modality_in
        if modality in ("TEXT", "SPEECH") and modality != last:
            ids.append(self.vocab.text_id if modality == "TEXT" else self.vocab.speech_id)
        return ids

    @torch.no_grad()
    def generate(
        self,
        pieces: list[tuple[str, object]],
        modality: str = "ARBITRARY",
        until_switch: bool = False,
        **generation,
    ) -> dict:
        """Interleaved prompt -> {"text": the text pieces, "speech_tokens": the speech pieces as strings,
        "audio": their waveform [S] at 16 kHz (or None), "sample_rate", "pieces": [(modality, str)]}.
        until_switch (TEXT or SPEECH): the other modality's switch may be generated and ends the output, as
        eos does (a few-shot prompt's next example would start there)."""
        suppressed = self.vocab.suppressed_ids(modality)
        if until_switch:
            switch = self.vocab.speech_id if modality == "TEXT" else self.vocab.text_id
            suppressed = [i for i in suppressed if i != switch]
            generation["stopping_criteria"] = StoppingCriteriaList([SwitchCriteria(switch)])
        input_ids = torch.tensor([self.prompt_ids(pieces, modality)], device=self.device)
        synced = (
            self._trainer is not None and self.trainer.world_size > 1
        )  # FSDP: every rank steps until all end
        new_ids = generate_in_modality(
            self.net,
            input_ids,
            suppressed,
            self.tokenizer.eos_id,
            self.tokenizer.pad_id,
            **{"synced_gpus": synced, **self.generation, **generation},
        )
        out_pieces, waves = [], []
        for piece_modality, ids in self.vocab.split(new_ids.tolist()):
            if piece_modality == "TEXT":
                out_pieces.append(("TEXT", self.tokenizer.decode(ids)))
            else:
                tokens = self.vocab.speech_tokens(ids)
                out_pieces.append(("SPEECH", self.speech_tokenizer.to_string(tokens)))
                if self.speech_tokenizer.decoder is not None:
                    waves.append(self.speech_tokenizer.decode(tokens))
        return {
            "text": " ".join(p for m, p in out_pieces if m == "TEXT"),
            "speech_tokens": " ".join(p for m, p in out_pieces if m == "SPEECH"),
            "audio": torch.cat(waves) if waves else None,
            "sample_rate": self.sample_rate,
            "pieces": out_pieces,
        }

    # -- the evaluation protocol (slmlab.eval.evaluate) ------------------------------------------------------
    def _score_pieces(
        self, bodies: list[list[int]], switch: int, batch_size: int = 32
    ) -> list[tuple[float, int]]:
        """Log-likelihood (nats) of each token body after bos and its modality switch, and its length."""
        scores = []
        for i in range(0, len(bodies), batch_size):
            chunk = bodies[i : i + batch_size]
            losses, _ = self.token_losses(
                [[self.tokenizer.bos_id, switch, *body] for body in chunk]
            )
            scores += [
                (-float(losses[j, 1 : 1 + len(body)].sum()), len(body))
                for j, body in enumerate(chunk)
            ]
        return scores

    @torch.no_grad()
    def score_texts(self, texts: list[str]) -> list[tuple[float, int]]:
        """[TEXT] + BPE: the log-likelihood of each text's BPE tokens (eos excluded) and their count."""
        return self._score_pieces(
            [self.tokenizer.encode(t, bos=False, eos=False) for t in texts], self.vocab.text_id
        )

    @torch.no_grad()
    def score_speech(
        self, waveforms: list[torch.Tensor], speakers: list[str | None]
    ) -> list[tuple[float, int]]:
        """[SPEECH] + speech tokens of 16 kHz waveforms: their log-likelihood (eos excluded) and count
        (the speaker is not modelled)."""
        bodies = [
            self.sequences.speech(self.speech_tokenizer.encode_streams(w, self.streams))
            for w in waveforms
        ]
        return self._score_pieces(bodies, self.vocab.speech_id)

    def transcribe(
        self,
        waveforms: list[torch.Tensor],
        max_new_tokens: int = 40,
        examples: list[list[tuple[torch.Tensor, str]]] | None = None,
    ) -> list[str]:
        """ASR by prompting [SPEECH]units[TEXT], greedy. examples: per waveform, (16 kHz waveform, its
        text) pairs placed before it (few-shot, `few_shot_pieces`; the output ends at eos or `[SPEECH]`)."""
        return [
            self.generate(
                few_shot_pieces(shots, w, "asr") if examples else [("SPEECH", w)],
                "TEXT",
                until_switch=bool(examples),
                do_sample=False,
                max_new_tokens=max_new_tokens,
            )["text"]
            for w, shots in zip(waveforms, examples or [None] * len(waveforms))
        ]

    def synthesise(
        self,
        text: str,
        speaker: str | None = None,
        max_seconds: float = 8.0,
        examples: list[tuple[torch.Tensor, str]] | None = None,
    ) -> torch.Tensor:
        """TTS by prompting [TEXT]text[SPEECH] (the speaker is not modelled) -> waveform [S] at 16 kHz.
        examples: (16 kHz waveform, its text) pairs placed before it (few-shot, `few_shot_pieces`; the
        output ends at eos or `[TEXT]`)."""
        out = self.generate(
            few_shot_pieces(examples, text, "tts") if examples else [("TEXT", text)],
            "SPEECH",
            until_switch=bool(examples),
            max_new_tokens=self._speech_budget(max_seconds),
        )
        return out["audio"] if out["audio"] is not None else torch.zeros(0)

    def continue_speech(
        self,
        prompt: torch.Tensor,
        seconds: float,
        prompt_text: str = "",
        speaker: str | None = None,
        next_text: str = "",
    ) -> torch.Tensor:
        """The speech that follows a 16 kHz prompt waveform, about `seconds` long, from speech tokens
        alone (the transcripts and the speaker the evaluator offers are not used)."""
        out = self.generate(
            [("SPEECH", prompt)],
            "SPEECH",
            max_new_tokens=self._speech_budget(seconds),
            min_new_tokens=self._speech_budget(seconds) // 2,
        )
        return out["audio"] if out["audio"] is not None else torch.zeros(0)

    def resynthesise(self, waveform: torch.Tensor) -> torch.Tensor:
        """A 16 kHz waveform through the speech tokens and the unit vocoder: the ceiling of speech output."""
        streams = self.speech_tokenizer.encode_streams(waveform, self.streams)
        return self.speech_tokenizer.decode(self.speech_tokenizer.merge(streams))

    def _speech_budget(self, seconds: float) -> int:
        """Speech tokens in `seconds` before de-duplication: units at 25 Hz (+ pitch at 12.5 Hz, style at 1 Hz)."""
        return int(seconds * sum(TOKEN_RATES[KIND_OF[s]] for s in self.streams))

    def respond(
        self,
        text: str | None = None,
        audio: torch.Tensor | None = None,
        modality: str = "ARBITRARY",
        **generation,
    ) -> dict:
        """`slmlab-generate`: a text and/or a waveform (text first, the speech continuing it) -> text and/or speech."""
        pieces = ([("TEXT", text)] if text else []) + (
            [("SPEECH", audio)] if audio is not None else []
        )
        if not pieces:
            raise ValueError("model=spiritlm needs a text and/or an audio prompt")
        return self.generate(pieces, modality, **generation)

    def save_pretrained(self, path: str | Path) -> None:
        """The LM (transformers layout), the extended text tokenizer and the speech tokenizer, in one folder."""
        self.net.save_pretrained(path)
        self.tokenizer.save(path)
        self.speech_tokenizer.save(path)
