"""Rates and alphabets every part of slmlab agrees on, defined once."""

SAMPLE_RATE = 16_000
"""Hz: the corpus's 16 kHz audio, read by the speech units (+ pitch, style), SpeechLM's encoders, the
judge ASR and the style classifier, and the rate of the evaluator's waveforms."""

CODEC_SAMPLE_RATE = 24_000
"""Hz: the corpus's second copy of each utterance, read by the codecs (Mimi and the built-in one)."""

CORPUS_SAMPLE_RATES = (SAMPLE_RATE, CODEC_SAMPLE_RATE)
"""The rates the embedded corpus is written at (`wav16k/`, `wav24k/`)."""

CODEC_FRAME_RATE = 12.5
"""Hz: codec frames per second (Mimi's, which the built-in codec matches)."""

TOKEN_RATES = {"St": 1.0, "Hu": 25.0, "Pi": 12.5}
"""Tokens per second of Spirit LM's speech streams: style, phonetic units, pitch."""

CTC_ALPHABET = " abcdefghijklmnopqrstuvwxyz'"
"""The characters of every CTC head (the judge ASR, SpeechLM's auxiliary loss): index + 1 is the class,
0 is CTC's blank; other characters are dropped."""
