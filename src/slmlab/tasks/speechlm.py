"""`model=speechlm`: audio encoder -> projector -> causal LM, trained to write the transcript of its audio."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torchmetrics.text import CharErrorRate, WordErrorRate
from transformers import LogitsProcessorList

from slmlab.constants import SAMPLE_RATE
from slmlab.models.joint_decoding import JointCTCDecoding
from slmlab.models.speechlm import ctc_character_ids, ctc_label_ids
from slmlab.tasks.base import SLMTask
from slmlab.tokenizers.frontends import extract_features
from slmlab.tokenizers.prompts import AUDIO_TOKEN, prompt_batch

log = logging.getLogger(__name__)


class SpeechLMTask(SLMTask):
    """batch["audio"]: [B, S] at `sample_rate`; batch["text_ids"]: bos + BPE + eos. Loss on transcript + eos only.

    net: a partial of `models.pretrained.load_or_build_speechlm` (sizes or local folders from config);
    feature_extractor: a partial of `tokenizers.frontends.build_feature_extractor`; freeze: parts of
    `SpeechLM.FREEZABLE`; generation: keywords for the decoder's `generate` (num_beams, do_sample,
    temperature, top_p, max_new_tokens), and ctc_weight > 0 for joint CTC/attention decoding with the
    CTC head (`models/joint_decoding.py`; ctc_candidates: the decoder's tokens scored per hypothesis).
    """

    capabilities = frozenset({"transcribe"})

    @classmethod
    def fsdp_block_classes(cls) -> set[type]:
        """The encoders' layers (Whisper, wav2vec2, HuBERT, FastConformer) and the decoders' (Qwen2, Llama,
        GPT-2)."""
        from transformers.models.gpt2.modeling_gpt2 import GPT2Block
        from transformers.models.hubert.modeling_hubert import (
            HubertEncoderLayer,
            HubertEncoderLayerStableLayerNorm,
        )
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer
        from transformers.models.parakeet.modeling_parakeet import ParakeetEncoderBlock
        from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer
        from transformers.models.wav2vec2.modeling_wav2vec2 import (
            Wav2Vec2EncoderLayer,
            Wav2Vec2EncoderLayerStableLayerNorm,
        )
        from transformers.models.whisper.modeling_whisper import WhisperEncoderLayer

        return {
            WhisperEncoderLayer,
            Wav2Vec2EncoderLayer,
            Wav2Vec2EncoderLayerStableLayerNorm,
            HubertEncoderLayer,
            HubertEncoderLayerStableLayerNorm,
            ParakeetEncoderBlock,
            Qwen2DecoderLayer,
            LlamaDecoderLayer,
            GPT2Block,
        }

    def __init__(
        self,
        net,
        feature_extractor,
        tokenizer,
        optimizer,
        scheduler=None,
        prompt_template: str = f"{AUDIO_TOKEN} transcribe:",
        freeze: list[str] = (),
        sample_rate: int = SAMPLE_RATE,
        generation: dict | None = None,
        sample_count: int = 4,
    ) -> None:
        super().__init__(optimizer, scheduler)
        self.tokenizer = tokenizer
        (audio_token_id,) = tokenizer.add_special_tokens([AUDIO_TOKEN])
        self.net = net(
            vocab_size=len(tokenizer),
            audio_token_id=audio_token_id,
            pad_token_id=tokenizer.pad_id,
            bos_token_id=tokenizer.bos_id,
            eos_token_id=tokenizer.eos_id,
        )
        self.net.freeze(list(freeze))
        self.feature_extractor = feature_extractor(
            audio_config=self.net.config.audio_config, sample_rate=sample_rate
        )
        self.prompt_template, self.sample_rate, self.sample_count = (
            prompt_template,
            sample_rate,
            sample_count,
        )
        self.generation = {"max_new_tokens": 48, **(generation or {})}
        if self.net.ctc_head is None and self.generation.get("ctc_weight"):
            log.warning(
                "generation.ctc_weight=%s is not used: this SpeechLM has no CTC head "
                "(model.task.net.ctc_weight=0), so it decodes with its decoder alone",
                self.generation["ctc_weight"],
            )
            self.generation["ctc_weight"] = 0.0
        self.wer = nn.ModuleDict({stage: WordErrorRate() for stage in ("val", "test")})
        self.cer = nn.ModuleDict({stage: CharErrorRate() for stage in ("val", "test")})
        self._samples: list[str] = []

    # -- batches ----------------------------------------------------------------------------------------
    def model_inputs(
        self,
        waveforms: list[torch.Tensor],
        targets: list[list[int]] | None = None,
        text_prompt: str = "",
        padding_side: str = "right",
    ) -> dict:
        """Waveforms [S_i] (+ target ids) -> the keyword arguments of `SpeechLM.forward` / `generate`,
        on the task's device: the audio encoded first (`audio`), then the prompt with as many
        `<|audio|>` tokens as it gave each utterance."""
        with torch.autocast("cpu", enabled=False):  # numpy has no bf16 (bf16-mixed on CPU)
            features, lengths = extract_features(
                self.feature_extractor, [w.float().cpu() for w in waveforms], self.sample_rate
            )
        audio = self.net.encode(features.to(self.device), lengths.to(self.device))
        prompts = prompt_batch(
            self.tokenizer,
            self.prompt_template + text_prompt,
            audio.lengths.tolist(),
            targets,
            padding_side,
        )
        if targets is None:
            prompts.pop("labels")
        return {**{k: v.to(self.device) for k, v in prompts.items()}, "audio": audio}

    def batch_inputs(self, batch: dict) -> dict:
        """+ the transcript's characters for the CTC head."""
        waveforms = [audio[:n] for audio, n in zip(batch["audio"], batch["audio_lengths"])]
        targets = [
            ids[1:n].tolist() for ids, n in zip(batch["text_ids"], batch["text_ids_lengths"])
        ]  # drop bos
        ctc_targets, ctc_lengths = ctc_character_ids(batch["text"], self.net.config.ctc_alphabet)
        return {
            **self.model_inputs(waveforms, targets),
            "ctc_targets": ctc_targets.to(self.device),
            "ctc_target_lengths": ctc_lengths.to(self.device),
        }

    # -- training and evaluation -----------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        inputs = self.batch_inputs(batch)
        out = self.net(**inputs)
        size = len(batch["id"])
        self.log("train/loss", out.loss, prog_bar=True, batch_size=size)
        self.log("train/lm_loss", out.lm_loss, batch_size=size)
        if out.ctc_loss is not None:
            self.log("train/ctc_loss", out.ctc_loss, batch_size=size)
        batch["num_tokens"] = int(
            inputs["attention_mask"].sum()
        )  # LM positions, audio ones included (throughput)
        audio_tokens = (inputs["input_ids"] == self.net.config.audio_token_id).sum()
        seconds = batch["audio_lengths"].sum() / self.sample_rate
        self.log("train/audio_tokens_per_s", audio_tokens / seconds, batch_size=size)
        return out.loss

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val", keep_samples=batch_idx == 0)

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")

    def _evaluate(self, batch, stage: str, keep_samples: bool = False) -> None:
        """Teacher-forced LM loss and token accuracy over transcript tokens; WER/CER of the decoder's greedy
        transcripts."""
        inputs = self.batch_inputs(batch)
        out = self.net(**inputs)
        labels = inputs["labels"][:, 1:]
        scored = labels != -100
        tokens = int(scored.sum())
        accuracy = (out.logits[:, :-1].argmax(-1) == labels)[scored].float().mean()
        self.log(f"{stage}/loss", out.lm_loss, prog_bar=True, sync_dist=True, batch_size=tokens)
        if out.ctc_loss is not None:
            self.log(f"{stage}/ctc_loss", out.ctc_loss, sync_dist=True, batch_size=len(batch["id"]))
        self.log(f"{stage}/token_accuracy", accuracy, sync_dist=True, batch_size=tokens)
        waveforms = [audio[:n] for audio, n in zip(batch["audio"], batch["audio_lengths"])]
        # the decoder alone, greedy: cheap, and comparable across decoding settings
        hypotheses = self.transcribe(waveforms, num_beams=1, do_sample=False, ctc_weight=0.0)
        for metrics in (self.wer, self.cer):
            metrics[stage].update(hypotheses, batch["text"])
        self.log(f"{stage}/wer", self.wer[stage], prog_bar=True, batch_size=len(hypotheses))
        self.log(f"{stage}/cer", self.cer[stage], batch_size=len(hypotheses))
        if keep_samples:
            pairs = list(zip(batch["text"], hypotheses))[: self.sample_count]
            self._samples = [f"**ref** {ref}  \n**hyp** {hyp}" for ref, hyp in pairs]

    def on_validation_epoch_start(self) -> None:
        self._reset_metrics("val")

    def on_test_epoch_start(self) -> None:
        self._reset_metrics("test")

    def _reset_metrics(self, stage: str) -> None:
        """Fresh WER/CER states for each pass: states left by a pass under inference mode cannot be updated later."""
        self.wer[stage].reset()
        self.cer[stage].reset()

    def on_validation_epoch_end(self) -> None:
        if self._samples and not self.trainer.sanity_checking:
            self.log_text("samples/val", "\n\n".join(self._samples))

    # -- generation and export -------------------------------------------------------------------------
    @torch.no_grad()
    def transcribe(
        self, waveforms: list[torch.Tensor], text_prompt: str = "", **generation
    ) -> list[str]:
        """Waveforms [S_i] at `sample_rate` -> text, with the optional `text_prompt` after the audio;
        `generation` overrides the configured decoding (e.g. num_beams=4, or do_sample=True, top_p=0.9)."""
        inputs = self.model_inputs(waveforms, text_prompt=text_prompt, padding_side="left")
        generation = {**self.generation, **generation}
        ctc_weight = generation.pop("ctc_weight", 0.0)
        candidates = generation.pop("ctc_candidates", 16)
        if ctc_weight > 0:
            audio = inputs["audio"]
            if audio.ctc_logits is None:
                raise ValueError(
                    "generation.ctc_weight > 0 decodes with the CTC head: set model.task.net.ctc_weight > 0"
                )
            alphabet = self.net.config.ctc_alphabet
            joint = JointCTCDecoding(
                audio.ctc_logits.log_softmax(-1),
                audio.state_lengths,
                lambda rows: [
                    tuple(ctc_label_ids(text, alphabet))
                    for text in self.tokenizer.decode_batch(rows)
                ],
                self.tokenizer.eos_id,
                ctc_weight,
                candidates,
            )
            generation["logits_processor"] = LogitsProcessorList([joint])
        ids = self.net.generate(
            **inputs,
            **generation,
            eos_token_id=self.tokenizer.eos_id,
            pad_token_id=self.tokenizer.pad_id,
        )
        return [self.tokenizer.decode(row) for row in ids]

    def respond(
        self,
        text: str | None = None,
        audio: torch.Tensor | None = None,
        modality: str = "TEXT",
        **generation,
    ) -> dict:
        """`slmlab-generate`: audio [S] (+ an optional text prompt after it) -> {"text": transcript}."""
        if audio is None or modality != "TEXT":
            raise ValueError(
                f"model=speechlm takes audio (and optional text) and writes TEXT; got audio="
                f"{'given' if audio is not None else 'none'}, modality={modality}"
            )
        return {
            "text": self.transcribe([audio], text_prompt=f" {text}" if text else "", **generation)[
                0
            ]
        }

    def save_pretrained(self, path: str | Path) -> None:
        """One folder with the model and its config, the tokenizer and the feature extractor (transformers layout)."""
        self.net.save_pretrained(path)
        self.tokenizer.save(path)
        self.feature_extractor.save_pretrained(path)
