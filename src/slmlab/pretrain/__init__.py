"""Pretrained parts made per corpus: the text LM (`text_lm.py`) and the speech encoder (`speech_encoder.py`),
each fitted once per corpus and settings, cached under `<corpus>/artifacts/` (`artifacts.fit_once`) and saved
as a local `save_pretrained` folder, so that the arms load them through the code paths a real Llama or
HuBERT checkpoint takes."""
