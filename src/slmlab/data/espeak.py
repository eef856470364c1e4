"""eSpeak NG synthesis through the library shipped by the `espeakng-loader` wheel (no system package).

`EspeakSynthesizer.synthesize(text, voice, pitch, pitch_range, rate)` returns the waveform at the
engine's native rate (22.05 kHz) and one `(word, start_s, end_s)` per word. Word starts come from the
engine's WORD events (the synthesis callback); a word ends where the next one starts, with the
pauses around it trimmed by an energy threshold. `phones(text, voice)` gives the phonemes eSpeak
speaks for `text` (its text-to-phonemes API, what `espeak-ng -q -x --ipa` prints).

This is a minimal ctypes binding of `speak_lib.h`; it replaces calling the `espeak-ng` executable.
"""

from __future__ import annotations

import ctypes
import json
import math
import multiprocessing as mp
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import espeakng_loader
import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_DONT_EXIT = 0x8000
POS_CHARACTER = 1
CHARS_UTF8 = 1
EVENT_LIST_TERMINATED, EVENT_WORD = 0, 1
PARAM_RATE, PARAM_VOLUME, PARAM_PITCH, PARAM_RANGE = 1, 2, 3, 4
# espeak_TextToPhonemes' phonememode: bit 1 = IPA, bits 8-23 = the character between phonemes
PHONEME_SEPARATOR = "_"
PHONEMES_IPA = 0x02 | ord(PHONEME_SEPARATOR) << 8
STRESS_MARKS = "ˈˌ"


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based character offset of the word
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # milliseconds from the start of the utterance
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


@dataclass
class Synthesis:
    """wav: float32 [T] at `sample_rate`; words: (word, start_s, end_s) in text order."""

    wav: np.ndarray
    sample_rate: int
    words: list[tuple[str, float, float]]


class EspeakSynthesizer:
    """One engine per process (the library keeps global state)."""

    _lib = None
    _sample_rate = 0

    def __init__(self) -> None:
        if EspeakSynthesizer._lib is None:
            lib = ctypes.CDLL(espeakng_loader.get_library_path())
            lib.espeak_Initialize.restype = ctypes.c_int
            lib.espeak_Initialize.argtypes = [
                ctypes.c_int,
                ctypes.c_int,
                ctypes.c_char_p,
                ctypes.c_int,
            ]
            lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
            lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
            lib.espeak_Synth.argtypes = [
                ctypes.c_void_p,
                ctypes.c_size_t,
                ctypes.c_uint,
                ctypes.c_int,
                ctypes.c_uint,
                ctypes.c_uint,
                ctypes.POINTER(ctypes.c_uint),
                ctypes.c_void_p,
            ]
            data_parent = espeakng_loader.get_data_path().rsplit("/", 1)[0]
            rate = lib.espeak_Initialize(
                AUDIO_OUTPUT_SYNCHRONOUS, 0, data_parent.encode(), INITIALIZE_DONT_EXIT
            )
            if rate <= 0:
                raise RuntimeError(f"eSpeak NG failed to initialise from {data_parent}")
            lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
            lib.espeak_TextToPhonemes.argtypes = [
                ctypes.POINTER(ctypes.c_void_p),
                ctypes.c_int,
                ctypes.c_int,
            ]
            lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
            lib.espeak_ng_SetRandSeed(
                0
            )  # the engine seeds its noise generator from the clock otherwise
            EspeakSynthesizer._lib, EspeakSynthesizer._sample_rate = lib, rate
        self.lib = EspeakSynthesizer._lib
        self.sample_rate = EspeakSynthesizer._sample_rate
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int]] = []  # (text_position, audio_position_ms)
        self._callback = _CALLBACK(self._on_audio)  # kept alive as long as the engine uses it
        self.lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav, num_samples, events) -> int:
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        i = 0
        while events[i].type != EVENT_LIST_TERMINATED:
            if events[i].type == EVENT_WORD:
                self._events.append((events[i].text_position, events[i].audio_position))
            i += 1
        return 0

    def synthesize(
        self,
        text: str,
        voice: str = "en-us",
        pitch: int = 50,
        pitch_range: int = 50,
        rate: int = 175,
    ) -> Synthesis:
        """Speak `text` (plain words separated by spaces) with eSpeak's voice and prosody settings."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"unknown eSpeak voice {voice!r}")
        for param, value in (
            (PARAM_PITCH, pitch),
            (PARAM_RANGE, pitch_range),
            (PARAM_RATE, rate),
            (PARAM_VOLUME, 100),
        ):
            self.lib.espeak_SetParameter(param, int(value), 0)
        self._chunks, self._events = [], []
        encoded = text.encode() + b"\0"
        buffer = ctypes.create_string_buffer(encoded)
        status = self.lib.espeak_Synth(
            buffer, len(encoded), 0, POS_CHARACTER, 0, CHARS_UTF8, None, None
        )
        if status != 0:
            raise RuntimeError(f"eSpeak NG synthesis failed (status {status}) for {text!r}")
        wav = (np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)).astype(
            np.float32
        ) / 32768.0
        return Synthesis(wav, self.sample_rate, self._word_times(text, wav))

    def phones(self, text: str, voice: str = "en-us") -> list[str]:
        """The IPA phonemes (stress marks dropped) `voice` speaks for `text`, in order; eSpeak fuses
        some word pairs ("there are") into one phonetic word, so no word boundaries are kept."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"unknown eSpeak voice {voice!r}")
        buffer = ctypes.create_string_buffer(text.encode())
        # the engine reads one clause per call and moves `position` past it (NULL at the end)
        position = ctypes.c_void_p(ctypes.addressof(buffer))
        phonemes = []
        while position.value:
            clause = self.lib.espeak_TextToPhonemes(
                ctypes.byref(position), CHARS_UTF8, PHONEMES_IPA
            )
            phonemes += clause.decode().replace(" ", PHONEME_SEPARATOR).split(PHONEME_SEPARATOR)
        return [p for p in (p.strip(STRESS_MARKS) for p in phonemes) if p]

    def _word_times(self, text: str, wav: np.ndarray) -> list[tuple[str, float, float]]:
        """eSpeak fires one WORD event per spoken group; it fuses some function words with their
        neighbour ("there are"), so a group's time is shared among its words by letter count."""
        spans = [(m.start() + 1, m.group()) for m in re.finditer(r"\S+", text)]
        starts = {pos: ms / 1000.0 for pos, ms in self._events}
        if not spans or spans[0][0] not in starts:
            raise RuntimeError(f"eSpeak gave no word event for the start of {text!r}")
        total = len(wav) / self.sample_rate
        groups: list[list[str]] = []
        group_starts: list[float] = []
        for pos, word in spans:
            if pos in starts:
                groups.append([])
                group_starts.append(starts[pos])
            groups[-1].append(word)
        times = []
        for words, begin, end in zip(groups, group_starts, group_starts[1:] + [total]):
            letters = np.cumsum([0] + [len(w) for w in words])
            edges = begin + (end - begin) * letters / letters[-1]
            times += [
                (w, *_trim_silence(wav, self.sample_rate, b, e))
                for w, b, e in zip(words, edges[:-1], edges[1:])
            ]
        return times


def _trim_silence(
    wav: np.ndarray,
    sr: int,
    start: float,
    end: float,
    frame_s: float = 0.01,
    threshold: float = 0.01,
) -> tuple[float, float]:
    """Shrink [start, end] (seconds) over leading and trailing 10 ms frames whose RMS is below `threshold`."""
    hop = int(frame_s * sr)
    i, j = int(start * sr), int(end * sr)

    def loud(a: int) -> bool:
        frame = wav[a : a + hop]
        return float(np.sqrt(np.mean(frame * frame))) >= threshold

    while j - hop > i and not loud(j - hop):
        j -= hop
    while i + hop < j and not loud(i):
        i += hop
    return round(i / sr, 3), round(max(j, i + hop) / sr, 3)


def speak_to_files(request: list) -> tuple[list[str], float, list[dict]]:
    """Speak one utterance and write it as PCM-16 WAVs at each rate (polyphase resampling).

    request: (text, voice, pitch, pitch_range, rate_wpm, root, utterance_id, sample_rates).
    Returns the paths (root/wav16k/id.wav, ...), the duration in s and the word timings.
    Kept free of torch so that it runs in cheap forked workers.
    """
    text, voice, pitch, pitch_range, rate, root, utterance_id, sample_rates = request
    synthesis = EspeakSynthesizer().synthesize(text, voice, pitch, pitch_range, rate)
    paths = []
    for target in sample_rates:
        common = math.gcd(target, synthesis.sample_rate)
        wav = resample_poly(synthesis.wav, target // common, synthesis.sample_rate // common)
        paths.append(str(Path(root) / f"wav{target // 1000}k" / f"{utterance_id}.wav"))
        sf.write(paths[-1], np.clip(wav, -1, 1), target, subtype="PCM_16")
    words = [{"word": w, "start": s, "end": e} for w, s, e in synthesis.words]
    return paths, len(synthesis.wav) / synthesis.sample_rate, words


def speak_many(requests: list[list], workers: int = 2) -> list[tuple[list[str], float, list[dict]]]:
    """`speak_to_files` for every request, in a fresh process per utterance.

    eSpeak NG carries random state from one utterance to the next that no seed call resets, so a
    corpus is reproducible byte for byte only if every utterance starts from a freshly initialised
    engine. A small server process (`python -m slmlab.data.espeak`, numpy/scipy only, no torch)
    forks one short-lived worker per utterance, which keeps each fork cheap (~15 ms).
    """
    with tempfile.TemporaryDirectory() as tmp:
        jobs, results = Path(tmp) / "requests.json", Path(tmp) / "results.json"
        jobs.write_text(json.dumps(requests))
        subprocess.run(
            [sys.executable, "-m", "slmlab.data.espeak", str(jobs), str(results), str(workers)],
            check=True,
        )
        return [tuple(r) for r in json.loads(results.read_text())]


def _serve(requests_path: str, results_path: str, workers: str) -> None:
    requests = json.loads(Path(requests_path).read_text())
    with mp.get_context("fork").Pool(int(workers), maxtasksperchild=1) as pool:
        results = pool.map(speak_to_files, requests, chunksize=1)
    Path(results_path).write_text(json.dumps(results))


if __name__ == "__main__":
    _serve(*sys.argv[1:4])
