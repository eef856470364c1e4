"""`model=csm`: a backbone over text + codec frames and an audio decoder, trained with compute amortisation,
generating speech frame by frame with KV caches."""

from __future__ import annotations

import torch

from slmlab.models.csm import CSM
from slmlab.tasks.base import SLMTask


class CSMTask(SLMTask):
    """batch: `codes` [B, T, K] at the codec's frame rate, `text`, `speaker`, `context` (previous turns).
    Each utterance becomes a segment: the frames of bos + `[speaker]text` + eos, its audio frames, and an
    all-zero end frame (as the reference formats them). Loss: codebook 0 on every audio frame +
    codebooks 1..K-1 on a random `decoder_fraction` of them (validation and test: all of them).

    net: a partial of `build_csm` (sizes from `model/csm/size`); codec: the speech tokenizer;
    audio_vocab_size: the code embedding and head size (null: the codec's cardinality; CSM-1B uses 2051);
    generation: temperature, topk, max_seconds.
    """

    capabilities = frozenset(
        {
            "synthesise",
            "score_speech",
            "continue_speech",
            "resynthesise",
            "decode_true_codebook0",
        }
    )
    speaks = True

    @classmethod
    def fsdp_block_classes(cls) -> set[type]:
        """torchtune's self-attention layers, of the backbone and of the audio decoder."""
        from torchtune.modules import TransformerSelfAttentionLayer

        return {TransformerSelfAttentionLayer}

    def __init__(
        self,
        net,
        tokenizer,
        speech_tokenizer,
        optimizer,
        scheduler=None,
        decoder_fraction: float = 1 / 16,
        audio_vocab_size: int | None = None,
        generation: dict | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(optimizer, scheduler)
        if not 0 < decoder_fraction <= 1:
            raise ValueError(f"decoder_fraction must be in (0, 1]; got {decoder_fraction}")
        if audio_vocab_size is not None and audio_vocab_size < speech_tokenizer.cardinality:
            raise ValueError(
                f"audio_vocab_size={audio_vocab_size} is smaller than the codec's {speech_tokenizer.cardinality} codes"
            )
        self.tokenizer, self.codec = tokenizer, speech_tokenizer
        self.net: CSM = net(
            text_vocab_size=len(tokenizer),
            num_codebooks=speech_tokenizer.num_codebooks,
            cardinality=audio_vocab_size or speech_tokenizer.cardinality,
        )
        self.decoder_fraction, self.sample_rate = decoder_fraction, speech_tokenizer.sample_rate
        self.generation = {
            "temperature": 0.9,
            "topk": 50,
            "max_seconds": 10.0,
            **(generation or {}),
        }
        self.generator = torch.Generator().manual_seed(seed)

    # -- frames -------------------------------------------------------------------------------------------
    def segment(
        self, text: str, speaker: str | None, codes: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One segment -> (tokens, mask) [S, K+1]: text frames of bos + `[speaker]text` + eos, then (when codes
        [T, K] are given) the audio frames and the all-zero end frame."""
        K = self.net.num_codebooks
        ids = torch.tensor(self.tokenizer.encode(f"[{speaker or 0}]{text}"))
        tokens, mask = (
            torch.zeros(len(ids), K + 1, dtype=torch.long),
            torch.zeros(len(ids), K + 1, dtype=torch.bool),
        )
        tokens[:, -1], mask[:, -1] = ids, True
        if codes is None:
            return tokens, mask
        audio = torch.cat([codes.long(), torch.zeros(1, K, dtype=torch.long)])  # + end frame
        audio_tokens = torch.cat([audio, torch.zeros(len(audio), 1, dtype=torch.long)], dim=1)
        audio_mask = torch.ones_like(audio_tokens, dtype=torch.bool)
        audio_mask[:, -1] = False
        return torch.cat([tokens, audio_tokens]), torch.cat([mask, audio_mask])

    def batch_frames(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> tokens, mask [B, S_max, K+1] (right-padded, padding masked out) and lengths [B]. An utterance with
        previous turns (`datamodule.context_turns`) is preceded by their segments, audio and all."""
        segments = []
        for i, (text, speaker, codes, n) in enumerate(
            zip(batch["text"], batch["speaker"], batch["codes"], batch["codes_lengths"])
        ):
            parts = [
                self.segment(turn["text"], turn["speaker"], turn["codes"])
                for turn in batch["context"][i]
            ]
            parts.append(self.segment(text, speaker, codes[:n]))
            segments.append((torch.cat([t for t, _ in parts]), torch.cat([m for _, m in parts])))
        lengths = torch.tensor([len(t) for t, _ in segments])
        K1 = self.net.num_codebooks + 1
        tokens = torch.zeros(len(segments), int(lengths.max()), K1, dtype=torch.long)
        mask = torch.zeros_like(tokens, dtype=torch.bool)
        for i, (t, m) in enumerate(segments):
            tokens[i, : len(t)], mask[i, : len(m)] = t, m
        return tokens.to(self.device), mask.to(self.device), lengths.to(self.device)

    # -- training and evaluation -----------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        tokens, mask, lengths = self.batch_frames(batch)
        batch["num_tokens"] = int(lengths.sum())  # backbone positions (throughput)
        out = self.net(tokens, mask, lengths, self.decoder_fraction, self.generator)
        self.log("train/loss", out.loss, prog_bar=True, batch_size=out.target_frames)
        self.log("train/c0_loss", out.c0_loss, batch_size=out.target_frames)
        self.log("train/decoder_loss", out.decoder_loss, batch_size=out.decoder_frames)
        self.log("train/decoder_frames", float(out.decoder_frames), batch_size=1)
        return out.loss

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")

    def _evaluate(self, batch, stage: str) -> None:
        """Both losses over every audio frame (no amortisation), frame-weighted over the split."""
        tokens, mask, lengths = self.batch_frames(batch)
        out = self.net(tokens, mask, lengths, decoder_fraction=1.0)
        for name in ("loss", "c0_loss", "decoder_loss"):
            self.log(
                f"{stage}/{name}",
                getattr(out, name),
                prog_bar=name == "loss",
                sync_dist=True,
                batch_size=out.target_frames,
            )

    # -- generation -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_speech(
        self,
        text: str,
        speaker: str | None = None,
        context: list[tuple[str, str, torch.Tensor]] = (),
        use_cache: bool = True,
        **generation,
    ) -> torch.Tensor:
        """`[speaker]text` after optional context segments (text, speaker, waveform at the codec's rate) -> waveform.
        generation: temperature, topk, max_seconds (overriding the configured ones)."""
        settings = {**self.generation, **generation}
        parts = [self.segment(t, s, self.codec.encode(w.cpu()).T) for t, s, w in context] + [
            self.segment(text, speaker)
        ]
        tokens = torch.cat([t for t, _ in parts])[None].to(self.device)
        mask = torch.cat([m for _, m in parts])[None].to(self.device)
        codes = self.net.generate(
            tokens,
            mask,
            max_frames=int(settings["max_seconds"] * self.codec.frame_rate),
            temperature=settings["temperature"],
            topk=settings["topk"],
            use_cache=use_cache,
        )
        return self.codec.decode(codes.cpu()) if codes.shape[1] else torch.zeros(0)

    # -- the evaluation protocol (slmlab.eval.evaluate) ------------------------------------------------------
    @torch.no_grad()
    def score_speech(
        self, waveforms: list[torch.Tensor], speakers: list[str | None]
    ) -> list[tuple[float, int]]:
        """Waveforms at the codec's rate, each as an audio segment after an empty `[speaker]` text -> the
        log-likelihood (nats) of all its codes and the end frame, and the number of codes."""
        scores = []
        for wave, speaker in zip(waveforms, speakers):
            tokens, mask = self.segment("", speaker, self.codec.encode(wave.cpu()).T)
            lengths = torch.tensor([len(tokens)], device=self.device)
            ll = self.net.log_likelihood(
                tokens[None].to(self.device), mask[None].to(self.device), lengths
            )
            scores.append((float(ll[0]), int(mask[:, :-1].sum())))
        return scores

    def synthesise(
        self, text: str, speaker: str | None = None, max_seconds: float = 8.0
    ) -> torch.Tensor:
        """TTS -> waveform [S] at the codec's rate."""
        return self.generate_speech(text, speaker, max_seconds=max_seconds)

    def continue_speech(
        self,
        prompt: torch.Tensor,
        seconds: float = 2.0,
        prompt_text: str = "",
        speaker: str | None = None,
        next_text: str = "",
    ) -> torch.Tensor:
        """The next turn after a prompt turn (its waveform at the codec's rate and transcript) by the same
        speaker, saying `next_text`: CSM carries prosody through its context segments."""
        return self.generate_speech(
            next_text, speaker, context=[(prompt_text, speaker, prompt)], max_seconds=2 * seconds
        )

    def resynthesise(self, waveform: torch.Tensor) -> torch.Tensor:
        """A waveform through the codec: the ceiling of speech output."""
        return self.codec.decode(self.codec.encode(waveform.cpu()))

    @torch.no_grad()
    def decode_true_codebook0(
        self, waveform: torch.Tensor, text: str, speaker: str | None = None
    ) -> torch.Tensor:
        """A waveform at the codec's rate and its transcript -> a waveform: its own codebook 0, and the other
        codebooks sampled by the decoder (at the generation settings) from the backbone teacher-forced on the
        text and true frames. The decoder's draws are seeded per call, so the figure does not depend on what
        was generated before it."""
        tokens, mask = self.segment(text, speaker, self.codec.encode(waveform.cpu()).T)
        codes = self.net.complete_codebook0(
            tokens[None].to(self.device),
            mask[None].to(self.device),
            temperature=self.generation["temperature"],
            topk=self.generation["topk"],
            generator=torch.Generator(self.device).manual_seed(0),
        )
        return self.codec.decode(codes.cpu())

    def respond(
        self,
        text: str | None = None,
        audio: torch.Tensor | None = None,
        modality: str = "SPEECH",
        speaker: str | None = None,
        **generation,
    ) -> dict:
        """`slmlab-generate`: text -> speech (an optional audio is not used as context here: it has no transcript)."""
        if not text or modality != "SPEECH":
            raise ValueError(
                f"model=csm takes a text and writes SPEECH; got text={'given' if text else 'none'}, "
                f"modality={modality}"
            )
        wave = self.generate_speech(text, speaker, **generation)
        return {"text": text, "audio": wave, "sample_rate": self.sample_rate}
