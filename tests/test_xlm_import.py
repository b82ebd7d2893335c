"""Import of original XLM / RE-LM checkpoints: key names, params mapping, identical outputs, restricted unpickling."""
import json
import math
import os
from collections import OrderedDict

import numpy as np
import pytest
import torch

from relm.config import ModelConfig
from relm.errors import CheckpointError
from relm.files import sha256_file
from relm.model.checkpoint import load_model
from relm.model.transformer import TransformerModel
from relm.model.xlm import convert_xlm_checkpoint

DIM, LAYERS, HEADS, NPOS = 16, 2, 4, 512
WORDS = ["<s>", "</s>", "<pad>", "<unk>"] + [f"<special{i}>" for i in range(10)] + [f"tok{i}" for i in range(20)]
V = len(WORDS)


def xlm_state(decoder=False, n_langs=2, adapter_size=0, seed=0, dim=DIM, layers=LAYERS, n_words=V):
    """A state dict written from XLM's key names and shapes (XLM src/model/transformer.py: TransformerModel), random
    values everywhere."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.3  # noqa: E731
    sd = OrderedDict()
    sd["position_embeddings.weight"] = r(NPOS, dim)
    if n_langs > 1:
        sd["lang_embeddings.weight"] = r(n_langs, dim)
    emb = r(n_words, dim)
    emb[2] = 0
    sd["embeddings.weight"] = emb
    sd["layer_norm_emb.weight"], sd["layer_norm_emb.bias"] = 1 + r(dim), r(dim)
    for i in range(layers):
        blocks = ["attentions"] + (["encoder_attn"] if decoder else [])
        for b in blocks:
            for lin in ("q_lin", "k_lin", "v_lin", "out_lin"):
                sd[f"{b}.{i}.{lin}.weight"], sd[f"{b}.{i}.{lin}.bias"] = r(dim, dim), r(dim)
        norms = ["layer_norm1", "layer_norm2"] + (["layer_norm15"] if decoder else [])
        for ln in norms:
            sd[f"{ln}.{i}.weight"], sd[f"{ln}.{i}.bias"] = 1 + r(dim), r(dim)
        sd[f"ffns.{i}.lin1.weight"], sd[f"ffns.{i}.lin1.bias"] = r(4 * dim, dim), r(4 * dim)
        sd[f"ffns.{i}.lin2.weight"], sd[f"ffns.{i}.lin2.bias"] = r(dim, 4 * dim), r(dim)
        if adapter_size:
            for a in (1, 2):
                sd[f"adapters_{a}.{i}.0.weight"], sd[f"adapters_{a}.{i}.0.bias"] = r(adapter_size, dim), r(adapter_size)
                sd[f"adapters_{a}.{i}.2.weight"], sd[f"adapters_{a}.{i}.2.bias"] = r(dim, adapter_size), r(dim)
    sd["pred_layer.proj.weight"] = emb  # tied
    sd["pred_layer.proj.bias"] = r(n_words)
    return sd


def xlm_params(gelu=True, adapter_size=0, langs=("en", "mk"), dim=DIM, layers=LAYERS, heads=HEADS, n_words=V):
    p = dict(emb_dim=dim, n_layers=layers, n_heads=heads, dropout=0.1, attention_dropout=0.1, gelu_activation=gelu,
             sinusoidal_embeddings=False, share_inout_emb=True, asm=False, n_langs=len(langs),
             id2lang={i: lang for i, lang in enumerate(langs)}, lang2id={lang: i for i, lang in enumerate(langs)},
             langs=list(langs), mask_scores=np.arange(1, n_words + 1, dtype=np.float64) ** -0.5,
             pred_probs=torch.FloatTensor([.8, .1, .1]), word_mask=np.float64(0.8), n_words=np.int64(n_words),
             mlm_steps=[("mk", None)], dump_path="/x", lambda_mt_config=None)
    if adapter_size:
        p.update(use_adapters=True, adapter_size=adapter_size)
    return p


def save_xlm(path, states: dict, params, ddp=False, legacy=False, words=WORDS, dico=True):
    """An XLM checkpoint file (XLM src/trainer.py: Trainer.save_checkpoint); dico=False leaves out the dico_* keys."""
    ck = {"epoch": 3, "n_total_iter": 1000, "best_metrics": {"valid_mk_mlm_ppl": 12.5}, "best_stopping_criterion": 12.5,
          "params": params}
    if dico:
        ck.update(dico_id2word=dict(enumerate(words)), dico_word2id={w: i for i, w in enumerate(words)},
                  dico_counts={w: (100 - i if i >= 14 else 0) for i, w in enumerate(words)})
    for name, sd in states.items():
        ck[name] = OrderedDict(("module." + k if ddp else k, v) for k, v in sd.items())
    torch.save(ck, path, _use_new_zipfile_serialization=not legacy)


# ---- XLM's post-norm forward written out, in XLM's (slen, bs) layout ----

def ln(x, sd, name):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-12) * sd[name + ".weight"] + sd[name + ".bias"]


def lin(x, sd, name):
    return x @ sd[name + ".weight"].T + sd[name + ".bias"]


def attention(sd, name, x, kv, mask):
    """x (qlen, bs, d), kv (klen, bs, d), mask (bs, qlen, klen) True = keep; loops over batch and heads."""
    q, k, v = lin(x, sd, name + ".q_lin"), lin(kv, sd, name + ".k_lin"), lin(kv, sd, name + ".v_lin")
    dh = DIM // HEADS
    out = torch.zeros_like(q)
    for b in range(x.shape[1]):
        for h in range(HEADS):
            sl = slice(h * dh, (h + 1) * dh)
            scores = (q[:, b, sl] / math.sqrt(dh)) @ k[:, b, sl].T
            scores = scores.masked_fill(~mask[b], -float("inf"))
            out[:, b, sl] = torch.softmax(scores, dim=-1) @ v[:, b, sl]
    return lin(out, sd, name + ".out_lin")


def xlm_forward(sd, x, lengths, lang_id, gelu=True, adapters=False, causal=False, src_enc=None, src_len=None):
    slen, bs = x.shape
    mask = torch.arange(slen)[:, None] < lengths[None, :]  # (slen, bs)
    if causal:
        attn_mask = torch.tril(torch.ones(slen, slen, dtype=torch.bool))[None].expand(bs, slen, slen)
    else:
        attn_mask = mask.T[:, None, :].expand(bs, slen, slen)
    t = sd["embeddings.weight"][x] + sd["position_embeddings.weight"][torch.arange(slen)][:, None, :]
    if "lang_embeddings.weight" in sd:
        t = t + sd["lang_embeddings.weight"][lang_id]
    t = ln(t, sd, "layer_norm_emb") * mask[..., None]
    act = (lambda z: 0.5 * z * (1 + torch.erf(z / math.sqrt(2)))) if gelu else torch.relu
    ada = lambda z, n: lin(torch.relu(lin(z, sd, n + ".0")), sd, n + ".2")  # noqa: E731
    for i in range(LAYERS):
        a = attention(sd, f"attentions.{i}", t, t, attn_mask)
        if adapters:
            a = ada(a, f"adapters_1.{i}") + a
        t = ln(t + a, sd, f"layer_norm1.{i}")
        if src_enc is not None:
            smask = (torch.arange(src_enc.shape[0])[None, :] < src_len[:, None])[:, None, :].expand(bs, slen, -1)
            t = ln(t + attention(sd, f"encoder_attn.{i}", t, src_enc, smask), sd, f"layer_norm15.{i}")
        f = lin(act(lin(t, sd, f"ffns.{i}.lin1")), sd, f"ffns.{i}.lin2")
        if adapters:
            f = ada(f, f"adapters_2.{i}") + f
        t = ln(t + f, sd, f"layer_norm2.{i}") * mask[..., None]
    return t, t @ sd["pred_layer.proj.weight"].T + sd["pred_layer.proj.bias"]


def inputs():
    g = torch.Generator().manual_seed(5)
    lengths = torch.tensor([6, 4, 2])
    x = torch.randint(4, V, (3, 6), generator=g)
    x[torch.arange(6)[None, :] >= lengths[:, None]] = 2
    x[:, 0] = 1
    return x, lengths


@pytest.mark.parametrize("gelu,adapter_size,ddp,legacy", [(True, 0, False, False), (False, 0, True, True),
                                                           (True, 8, True, False)])
def test_import_mlm_identical_logits(tmp_path, gelu, adapter_size, ddp, legacy):
    sd = xlm_state(adapter_size=adapter_size)
    save_xlm(tmp_path / "xlm.pth", {"model": sd}, xlm_params(gelu, adapter_size), ddp=ddp, legacy=legacy)
    summary = convert_xlm_checkpoint(tmp_path / "xlm.pth", tmp_path / "ours.pth")
    assert summary["kind"] == "mlm" and summary["langs"] == ["en", "mk"] and summary["n_words"] == V
    lm = load_model(tmp_path / "ours.pth")
    assert lm.decoder is None and lm.words == WORDS and lm.counts[14] == 86 and lm.counts[:14] == [0] * 14
    assert lm.model_config == ModelConfig(dim=DIM, n_layers=LAYERS, n_heads=HEADS, gelu=gelu, adapter_size=adapter_size)
    assert lm.config["xlm_params"]["emb_dim"] == DIM and "mask_scores" not in lm.config["xlm_params"]

    x, lengths = inputs()
    langs = torch.ones_like(x)  # mk
    ours = lm.encoder.logits(lm.encoder(x, lengths, langs))
    direct = TransformerModel(lm.model_config, V, 2, is_decoder=False).eval()
    direct.load_state_dict(sd, strict=True)  # XLM key names load as they are
    assert torch.allclose(ours, direct.logits(direct(x, lengths, langs)), atol=1e-6)
    _, ref = xlm_forward(sd, x.T, lengths, 1, gelu=gelu, adapters=bool(adapter_size))
    mask = torch.arange(6)[None, :] < lengths[:, None]
    assert torch.allclose(ours[mask], ref.transpose(0, 1)[mask], atol=1e-4)


def test_import_unmt_identical_decoder(tmp_path):
    enc_sd, dec_sd = xlm_state(seed=1), xlm_state(decoder=True, seed=2)
    save_xlm(tmp_path / "xlm.pth", {"encoder": enc_sd, "decoder": dec_sd}, xlm_params())
    assert convert_xlm_checkpoint(tmp_path / "xlm.pth", tmp_path / "ours.pth")["kind"] == "unmt"
    lm = load_model(tmp_path / "ours.pth")
    x, lengths = inputs()
    enc = lm.encoder(x, lengths, torch.zeros_like(x))
    out = lm.decoder.logits(lm.decoder(x, lengths, torch.ones_like(x), causal=True, src_enc=enc, src_len=lengths))
    ref_enc, _ = xlm_forward(enc_sd, x.T, lengths, 0)
    assert torch.allclose(enc, ref_enc.transpose(0, 1), atol=1e-4)
    _, ref = xlm_forward(dec_sd, x.T, lengths, 1, causal=True, src_enc=ref_enc, src_len=lengths)
    mask = torch.arange(6)[None, :] < lengths[:, None]
    assert torch.allclose(out[mask], ref.transpose(0, 1)[mask], atol=1e-4)


def test_unsorted_xlm_language_ids_are_remapped(tmp_path):
    sd = xlm_state()
    save_xlm(tmp_path / "xlm.pth", {"model": sd}, xlm_params(langs=("mk", "en")))
    convert_xlm_checkpoint(tmp_path / "xlm.pth", tmp_path / "ours.pth")
    lm = load_model(tmp_path / "ours.pth")
    assert lm.langs == ["en", "mk"]
    assert torch.equal(lm.encoder.lang_embeddings.weight[0], sd["lang_embeddings.weight"][1])  # en was XLM id 1


def test_required_kind(tmp_path):
    save_xlm(tmp_path / "xlm.pth", {"encoder": xlm_state(), "decoder": xlm_state(decoder=True)}, xlm_params())
    with pytest.raises(CheckpointError, match="is a unmt checkpoint \\(encoder, decoder\\), but a mlm checkpoint"):
        convert_xlm_checkpoint(tmp_path / "xlm.pth", tmp_path / "ours.pth", kind="mlm")
    assert not (tmp_path / "ours.pth").exists()
    assert convert_xlm_checkpoint(tmp_path / "xlm.pth", tmp_path / "ours.pth", kind="unmt")["kind"] == "unmt"


def test_numpy1_pickles_are_accepted(tmp_path):
    """Checkpoints written with numpy<2 name numpy.core.multiarray; legacy torch format keeps the pickle in clear."""
    save_xlm(tmp_path / "xlm.pth", {"model": xlm_state()}, xlm_params(), legacy=True)
    data = (tmp_path / "xlm.pth").read_bytes()
    assert b"numpy._core.multiarray" in data
    (tmp_path / "old.pth").write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert convert_xlm_checkpoint(tmp_path / "old.pth", tmp_path / "ours.pth")["kind"] == "mlm"


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


class Custom:
    pass


@pytest.mark.parametrize("payload,name", [(Evil(), "system"), (Custom(), "Custom")])
def test_forbidden_globals_are_refused(tmp_path, payload, name):
    params = xlm_params()
    params["evil"] = payload
    save_xlm(tmp_path / "bad.pth", {"model": xlm_state()}, params)
    with pytest.raises(CheckpointError, match=name):
        convert_xlm_checkpoint(tmp_path / "bad.pth", tmp_path / "out.pth")
    assert not (tmp_path / "out.pth").exists()


def test_mismatched_dictionary_is_an_error(tmp_path):
    sd = xlm_state()
    sd["embeddings.weight"] = sd["pred_layer.proj.weight"] = torch.randn(V + 1, DIM)
    sd["pred_layer.proj.bias"] = torch.randn(V + 1)
    save_xlm(tmp_path / "xlm.pth", {"model": sd}, xlm_params())
    with pytest.raises(CheckpointError, match=f"{V + 1} embedding rows but the dictionary has {V}"):
        convert_xlm_checkpoint(tmp_path / "xlm.pth", tmp_path / "ours.pth")


# ---- a released MLM: its vocabulary file and the config's architecture, checked on import ----

TOKENS = WORDS[14:]


def write_vocab(path, tokens):
    """A fastBPE getvocab file ('token count', counts descending)."""
    path.write_text("".join(f"{t} {1000 - i}\n" for i, t in enumerate(tokens)), encoding="utf-8")
    return path


def test_import_with_its_vocabulary_takes_ids_and_counts_from_it(tmp_path):
    """A checkpoint without dico_* keys gets its dictionary from the vocabulary file: 14 specials + its lines."""
    save_xlm(tmp_path / "xlm.pth", {"model": xlm_state()}, xlm_params(), dico=False)
    vocab = write_vocab(tmp_path / "vocab.en", TOKENS)
    with pytest.raises(CheckpointError, match="'dico_id2word' or a vocabulary file"):
        convert_xlm_checkpoint(tmp_path / "xlm.pth", tmp_path / "ours.pth")
    info = convert_xlm_checkpoint(tmp_path / "xlm.pth", tmp_path / "ours.pth", vocab=vocab,
                                  summary=tmp_path / "import.json")
    assert info["n_words"] == V
    lm = load_model(tmp_path / "ours.pth")
    assert lm.words == WORDS and lm.counts[14:] == [1000 - i for i in range(len(TOKENS))] and lm.counts[:14] == [0] * 14
    record = json.loads((tmp_path / "import.json").read_text())
    assert record["vocab"] == str(vocab) and record["vocab_sha256"] == sha256_file(vocab)
    assert record["checkpoint_sha256"] == sha256_file(tmp_path / "xlm.pth") and record["model_config"]["dim"] == DIM


@pytest.mark.parametrize("edit, dico, message", [
    (lambda t: t[:-1], True, f"{V - 15} tokens + 14 special words = {V - 1} ids, but the checkpoint has {V} embedding "
                             f"rows (its dictionary: {V} words)"),
    (lambda t: t[:-1], False, f"{V - 15} tokens + 14 special words = {V - 1} ids, but the checkpoint has {V} "
                              "embedding rows"),
    (lambda t: t + ["extra"], True, f"= {V + 1} ids, but the checkpoint has {V} embedding rows"),
    (lambda t: [t[1], t[0]] + t[2:], True, "id 14 is 'tok1' in the vocabulary but 'tok0' in the checkpoint's "
                                           "dictionary"),
], ids=["line-removed", "line-removed-no-dico", "line-added", "lines-swapped"])
def test_vocabulary_that_is_not_the_checkpoints_is_refused(tmp_path, edit, dico, message):
    save_xlm(tmp_path / "xlm.pth", {"model": xlm_state()}, xlm_params(), dico=dico)
    vocab = write_vocab(tmp_path / "vocab.en", edit(list(TOKENS)))
    with pytest.raises(CheckpointError) as e:
        convert_xlm_checkpoint(tmp_path / "xlm.pth", tmp_path / "ours.pth", vocab=vocab, summary=tmp_path / "s.json")
    msg = str(e.value)
    assert message in msg and str(vocab) in msg and str(tmp_path / "xlm.pth") in msg and "\n" not in msg
    assert not (tmp_path / "ours.pth").exists() and not (tmp_path / "s.json").exists()


def test_expected_architecture_is_checked(tmp_path):
    """Config keys name the settings; dropouts are not the architecture, new adapters are allowed."""
    save_xlm(tmp_path / "xlm.pth", {"model": xlm_state()}, xlm_params())
    ok = {"model.dim": DIM, "model.n_layers": LAYERS, "model.n_heads": HEADS, "model.pre_norm": False,
          "model.gelu": True, "model.dropout": 0.5, "mlm_systems.relm_adapters.model.adapter_size": 8}
    convert_xlm_checkpoint(tmp_path / "xlm.pth", tmp_path / "ours.pth", expect_model=ok)
    (tmp_path / "ours.pth").unlink()
    bad = dict(ok, **{"model.dim": 32, "model.pre_norm": True, "mlm_systems.relm.model.gelu": False})
    with pytest.raises(CheckpointError) as e:
        convert_xlm_checkpoint(tmp_path / "xlm.pth", tmp_path / "ours.pth", expect_model=bad)
    msg = str(e.value)
    assert msg.startswith(f"checkpoint {tmp_path / 'xlm.pth'} does not fit the config: ")
    for part in (f"model.dim = 32 but the checkpoint has {DIM}", "model.pre_norm = True but the checkpoint has False "
                 "(XLM and RE-LM are post-norm)", "mlm_systems.relm.model.gelu = False but the checkpoint has True"):
        assert part in msg
    assert "n_layers" not in msg and not (tmp_path / "ours.pth").exists()
    with pytest.raises(ValueError, match="'dimm' is not a model setting"):
        convert_xlm_checkpoint(tmp_path / "xlm.pth", tmp_path / "ours.pth", expect_model={"model.dimm": 1})


def test_adapters_of_the_checkpoint_must_keep_their_size(tmp_path):
    save_xlm(tmp_path / "xlm.pth", {"model": xlm_state(adapter_size=8)}, xlm_params(adapter_size=8))
    with pytest.raises(CheckpointError, match="model.adapter_size = 4 but the checkpoint has adapters of size 8"):
        convert_xlm_checkpoint(tmp_path / "xlm.pth", tmp_path / "ours.pth", expect_model={"model.adapter_size": 4})


def test_cli_import_xlm_with_vocab(tmp_path):
    """`relm import-xlm --vocab --expect-model --summary`: a mismatch is one line naming both files."""
    from relm.cli import main

    save_xlm(tmp_path / "xlm.pth", {"model": xlm_state()}, xlm_params())
    good, bad = write_vocab(tmp_path / "vocab.en", TOKENS), write_vocab(tmp_path / "short.en", TOKENS[:-1])
    expect = json.dumps({"dim": DIM, "n_layers": LAYERS})
    main(["import-xlm", str(tmp_path / "xlm.pth"), str(tmp_path / "ours.pth"), "--vocab", str(good),
          "--expect-model", expect, "--summary", str(tmp_path / "s.json")])
    assert load_model(tmp_path / "ours.pth").words == WORDS and (tmp_path / "s.json").is_file()
    with pytest.raises(SystemExit) as e:
        main(["import-xlm", str(tmp_path / "xlm.pth"), str(tmp_path / "o2.pth"), "--vocab", str(bad),
              "--origin", "config 'pretrained': vocab /x/vocab.en"])
    msg = str(e.value)
    assert msg.startswith(f"relm import-xlm: error: vocabulary {bad} does not match checkpoint {tmp_path / 'xlm.pth'}")
    assert msg.endswith(" (config 'pretrained': vocab /x/vocab.en)")
    assert "\n" not in msg and not (tmp_path / "o2.pth").exists()
    with pytest.raises(SystemExit, match="--expect-model must be a JSON object"):
        main(["import-xlm", str(tmp_path / "xlm.pth"), str(tmp_path / "o2.pth"), "--expect-model", "[1]"])
