"""translate_lines / translate_file with a tiny random UNMT checkpoint (content is meaningless; shape and order are not)."""
import io
import sys

import pytest
import torch

from relm.config import ModelConfig
from relm.data.dictionary import Dictionary
from relm.errors import CheckpointError
from relm.model.checkpoint import load_model, save_model
from relm.model.transformer import TransformerModel
from relm.translate import translate_file, translate_lines

TOKENS = ["the", "cat", "sat", "on", "mat", ".", "hello", "world", "th@@", "e@@", "s", "a@@", "t"]
CODES = "#version: 0.2\nt h\nth e</w>\nc a\nca t</w>\n"
LINES = ["Hello world.", "", "The cat sat on the mat.", "   ", "cats", "the the the cat."]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    cfg = ModelConfig(dim=16, n_layers=1, n_heads=2, dropout=0.0, attention_dropout=0.0, max_positions=24)
    dico = Dictionary.from_tokens(TOKENS, list(range(len(TOKENS), 0, -1)))
    enc = TransformerModel(cfg, len(dico), 2, is_decoder=False)
    dec = TransformerModel(cfg, len(dico), 2, is_decoder=True)
    with torch.no_grad():  # no EOS or specials: outputs run to max_len and differ between inputs
        dec.pred_layer.proj.bias[:14] = -10.0
    save_model(d / "unmt.pt", "unmt", {"encoder": enc, "decoder": dec}, cfg, ["en", "mk"], dico.words, dico.counts, {})
    save_model(d / "mlm.pt", "mlm", {"model": enc}, cfg, ["en", "mk"], dico.words, dico.counts, {})
    (d / "codes").write_text(CODES)
    return d


@pytest.mark.parametrize("beam_size", [1, 3])
def test_lines_order_and_empties(model, beam_size):
    ck, codes = model / "unmt.pt", model / "codes"
    detok, tok = translate_lines(ck, LINES, "en", "mk", codes, beam_size=beam_size, batch_size=2)
    assert len(detok) == len(tok) == len(LINES)
    assert detok[1] == tok[1] == "" and detok[3] == tok[3] == ""
    assert all(tok[i] for i in (0, 2, 4, 5)) and all("@@" not in t and "\n" not in t for t in tok)
    # batching and length sorting must not change which output belongs to which line
    single = [translate_lines(ck, [line], "en", "mk", codes, beam_size=beam_size)[1][0] for line in LINES]
    assert tok == single
    assert len(set(tok[i] for i in (0, 2, 4, 5))) > 1  # outputs do depend on the input


def test_max_len_bounds_output(model):
    loaded = load_model(model / "unmt.pt")
    _, tok = translate_lines(loaded, ["hello world"], "en", "mk", model / "codes", max_len_a=0.0, max_len_b=4)
    assert 1 <= len(tok[0].split()) <= 2  # 4 positions = BOS + 2 words + EOS


def test_long_line_truncated_with_warning(model):
    long = " ".join(["cat"] * 40)  # 40 tokens > max_positions 24 - 2
    with pytest.warns(UserWarning, match="truncated"):
        detok, _ = translate_lines(model / "unmt.pt", [long, "hello"], "mk", "en", model / "codes", max_len_a=3.0)
    assert len(detok) == 2 and detok[0]


def test_errors(model):
    with pytest.raises(CheckpointError, match="unmt"):
        translate_lines(model / "mlm.pt", ["hello"], "en", "mk", model / "codes")
    with pytest.raises(ValueError, match="'sq'"):
        translate_lines(model / "unmt.pt", ["hello"], "sq", "en", model / "codes")


def test_translate_file_and_stdin(model, tmp_path, monkeypatch, capfdbinary):
    inp = tmp_path / "in.en"
    inp.write_text("".join(l + "\n" for l in LINES))
    out, tok_out = tmp_path / "o" / "out.mk", tmp_path / "o" / "out.tok.mk"
    n = translate_file(model / "unmt.pt", inp, out, "en", "mk", model / "codes", tok_out=tok_out, batch_size=4)
    got, got_tok = out.read_text().split("\n"), tok_out.read_text().split("\n")
    assert n == len(LINES) and len(got) == len(got_tok) == len(LINES) + 1 and got[-1] == ""
    assert got[1] == got[3] == "" and got_tok[:-1] == translate_lines(model / "unmt.pt", LINES, "en", "mk",
                                                                       model / "codes")[1]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(inp.read_bytes()), encoding="utf-8"))
    assert translate_file(model / "unmt.pt", "-", "-", "en", "mk", model / "codes", batch_size=4) == len(LINES)
    assert capfdbinary.readouterr().out.decode() == out.read_text()


@pytest.mark.parametrize("batch_size, tokens, expected", [
    (32, 0, [[0, 1, 2, 3, 4]]),  # sentences only
    (2, 0, [[0, 1], [2, 3], [4]]),
    (32, 20, [[0], [1, 2], [3, 4]]),  # rows x longest row <= 20: 12, then 9+9, then 5+5 (a third 5 would be 15)
    (32, 5, [[0], [1], [2], [3], [4]]),  # a sentence over the budget is a batch of its own
])
def test_batches_by_sentences_and_tokens(batch_size, tokens, expected):
    from relm.translate import batches

    assert batches([0, 1, 2, 3, 4], [12, 9, 9, 5, 5], batch_size, tokens) == expected
