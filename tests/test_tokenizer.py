"""The shared text tokenizer: BPE fitted on the corpus, special tokens, a pretrained one from a local path."""

import pytest
from transformers import PreTrainedTokenizerFast

from slmlab.tokenizers.text import TextTokenizer, fit_bpe, load_or_fit_bpe, load_pretrained

TEXTS = ["the small dog runs quickly", "two red birds sing", "does the old cat sleep"] * 20


def test_bpe_round_trip_and_special_tokens():
    tok = fit_bpe(TEXTS, vocab_size=300)
    ids = tok.encode("the small dog sings")
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids) == "the small dog sings"
    before = len(tok)
    new_ids = tok.add_special_tokens(["[TEXT]", "[SPEECH]", "[Hu0]"])
    assert new_ids == [before, before + 1, before + 2] and len(tok) == before + 3
    assert tok.encode("[SPEECH][Hu0] dog", bos=False, eos=False)[:2] == new_ids[1:]


def test_bpe_is_fitted_once_and_saved_with_the_corpus(tiny_corpus):
    first = load_or_fit_bpe(tiny_corpus, vocab_size=512)
    folder = next((tiny_corpus.root / "artifacts" / "bpe").glob("bpe512-*/tokenizer.json")).parent
    assert (folder / "tokenizer.json").is_file()
    mtime = (folder / "tokenizer.json").stat().st_mtime_ns
    second = load_or_fit_bpe(tiny_corpus, vocab_size=512)
    assert (folder / "tokenizer.json").stat().st_mtime_ns == mtime
    assert first.fingerprint() == second.fingerprint()
    assert first.fingerprint() != load_or_fit_bpe(tiny_corpus, vocab_size=400).fingerprint()


def test_pretrained_tokenizer_from_a_local_folder(tmp_path):
    """A Llama-style tokenizer (no pad token) saved with save_pretrained loads through our loader."""
    backend = fit_bpe(TEXTS, vocab_size=300).hf.backend_tokenizer
    PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>"
    ).save_pretrained(tmp_path)
    tok = load_pretrained(str(tmp_path))
    assert isinstance(tok, TextTokenizer) and tok.pad_id is not None
    assert tok.decode(tok.encode("two red birds")) == "two red birds"
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_pretrained("meta-llama/Llama-3.2-1B")


@pytest.mark.parametrize("clean_up", [False, True])
def test_decode_batch_reads_each_list_as_decode_does(clean_up):
    """decode_batch (one call for joint decoding's thousands of candidates per step) equals decode on each
    list: special tokens skipped, transformers' clean-up of spaces before punctuation when the tokenizer
    asks for it, the ends stripped."""
    tok = fit_bpe(TEXTS + ["the dog , runs ."] * 5, vocab_size=300)
    tok.hf.clean_up_tokenization_spaces = clean_up
    rows = [
        tok.encode("the dog , runs ."),
        tok.encode("two red birds", bos=False),
        [tok.pad_id, *tok.encode("sing", eos=False)],
        [],
    ]
    assert tok.decode_batch(rows) == [tok.decode(ids) for ids in rows]
    assert tok.decode_batch(rows)[0] == ("the dog, runs." if clean_up else "the dog , runs .")
