"""Transformer forward pass, masks, tying, adapter freezing, checkpoints and vocabulary extension."""
import math

import pytest
import torch
import torch.nn.functional as F

from relm.config import ModelConfig
from relm.data.dictionary import Dictionary
from relm.errors import CheckpointError
from relm.files import atomic_torch_save
from relm.model.checkpoint import build_and_load, load_model, load_start, safe_load, save_model
from relm.model.extend import build_unmt_from_mlm, extend_state_dict, load_extended
from relm.model.transformer import TransformerModel, set_adapter_finetuning

V, PAD = 40, 2
VARIANTS = {
    "xlm": dict(),
    "prenorm_relu": dict(pre_norm=True, gelu=False),
    "adapters_sin": dict(adapter_size=8, sinusoidal=True),
}


def cfg(**kw):
    return ModelConfig(**{**dict(dim=32, n_layers=2, n_heads=4, max_positions=64), **kw})


def batch(bs=3, slen=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(4, V, (bs, slen), generator=g)
    lengths = torch.tensor([slen] + [max(2, slen - 2 - i) for i in range(bs - 1)])
    x[torch.arange(slen)[None, :] >= lengths[:, None]] = PAD
    return x, lengths


@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes_and_padding_invariance(variant):
    torch.manual_seed(0)
    m = TransformerModel(cfg(**VARIANTS[variant]), V, 2, is_decoder=False).eval()
    x, lengths = batch()
    langs = torch.ones_like(x)
    h = m(x, lengths, langs)
    assert h.shape == (3, 7, 32) and m.logits(h).shape == (3, 7, V)
    assert torch.all(h[1, lengths[1]:] == 0)  # pads zeroed
    # garbage in pad positions does not change real positions
    x2 = x.clone()
    x2[x == PAD] = 7
    h2 = m(x2, lengths, langs)
    assert torch.allclose(h, h2, atol=1e-6)
    # a padded sentence gives the same outputs as the sentence alone
    n = int(lengths[2])
    alone = m(x[2:3, :n], lengths[2:3], langs[2:3, :n])
    assert torch.allclose(alone[0], h[2, :n], atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_causal_decoder_ignores_future(variant):
    torch.manual_seed(0)
    m = TransformerModel(cfg(**VARIANTS[variant]), V, 2, is_decoder=True).eval()
    x, lengths = batch()
    src = torch.randn(3, 5, 32)
    src_len = torch.tensor([5, 3, 4])
    h = m(x, lengths, None, causal=True, src_enc=src, src_len=src_len)
    x2 = x.clone()
    x2[:, 4:] = 9
    h2 = m(x2, lengths, None, causal=True, src_enc=src, src_len=src_len)
    assert torch.allclose(h[:, :4], h2[:, :4], atol=1e-6)
    assert not torch.allclose(h[0, 4:], h2[0, 4:], atol=1e-4)  # the test can see a change
    # source padding is ignored by cross-attention
    src2 = src.clone()
    src2[1, 3:] = 100.0
    assert torch.allclose(h, m(x, lengths, None, causal=True, src_enc=src2, src_len=src_len), atol=1e-6)


def reference_attention(att, x, kv, mask):
    """XLM's MultiHeadAttention: q/sqrt(d), masked_fill(-inf), float softmax (mask True = keep)."""
    bs, qlen, dim = x.shape
    nh, dh = att.n_heads, dim // att.n_heads
    q = att.q_lin(x).view(bs, qlen, nh, dh).transpose(1, 2) / math.sqrt(dh)
    k = att.k_lin(kv).view(bs, -1, nh, dh).transpose(1, 2)
    v = att.v_lin(kv).view(bs, -1, nh, dh).transpose(1, 2)
    scores = (q @ k.transpose(2, 3)).masked_fill(~mask, -float("inf"))
    w = F.softmax(scores.float(), dim=-1).type_as(scores)
    return att.out_lin((w @ v).transpose(1, 2).reshape(bs, qlen, dim))


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_matches_reference_attention(causal):
    torch.manual_seed(1)
    m = TransformerModel(cfg(), V, 1, is_decoder=True).eval()
    att = m.attentions[0]
    x = torch.randn(4, 6, 32)
    if causal:
        mask = torch.tril(torch.ones(6, 6, dtype=torch.bool))[None, None]
    else:
        mask = (torch.arange(6)[None, :] < torch.tensor([6, 2, 5, 1])[:, None])[:, None, None, :]
    assert torch.allclose(att(x, mask), reference_attention(att, x, x, mask), atol=1e-6)
    kv = torch.randn(4, 3, 32)
    kmask = (torch.arange(3)[None, :] < torch.tensor([3, 1, 2, 3])[:, None])[:, None, None, :]
    assert torch.allclose(att(x, kmask, kv=kv), reference_attention(att, x, kv, kmask), atol=1e-6)


def test_init_and_tying():
    torch.manual_seed(0)
    m = TransformerModel(ModelConfig(dim=64, n_layers=1, n_heads=4), 500, 2, is_decoder=False)
    assert m.pred_layer.proj.weight is m.embeddings.weight
    assert torch.all(m.embeddings.weight[PAD] == 0)
    assert abs(m.embeddings.weight[3:].std().item() - 64**-0.5) < 0.01
    assert "lang_embeddings.weight" in m.state_dict()
    assert "lang_embeddings.weight" not in TransformerModel(cfg(), V, 1, False).state_dict()
    assert "lang_embeddings.weight" not in TransformerModel(cfg(use_lang_emb=False), V, 2, False).state_dict()
    # tying survives an optimizer step
    opt = torch.optim.Adam(m.parameters(), lr=0.1)
    x, lengths = batch()
    m(x, lengths).sum().backward()
    m.logits(m(x, lengths)).sum().backward()
    opt.step()
    assert m.pred_layer.proj.weight is m.embeddings.weight


def test_sinusoidal_positions():
    m = TransformerModel(cfg(sinusoidal=True), V, 1, False)
    w = m.position_embeddings.weight
    assert not w.requires_grad
    assert torch.allclose(w[3, 0], torch.tensor(math.sin(3.0)))
    assert torch.allclose(w[3, 1], torch.tensor(math.cos(3.0)))
    assert torch.allclose(w[5, 4], torch.tensor(math.sin(5 / 10000 ** (4 / 32))))


def test_pre_norm_key_names():
    post = set(TransformerModel(cfg(), V, 2, True).state_dict())
    pre = set(TransformerModel(cfg(pre_norm=True), V, 2, True).state_dict())
    assert pre - post == {"layer_norm_final.weight", "layer_norm_final.bias"} and post <= pre
    assert {"encoder_attn.1.q_lin.weight", "layer_norm15.0.bias", "pred_layer.proj.weight"} <= post


def test_adapter_finetuning_trainable_set():
    m = TransformerModel(cfg(adapter_size=8), V, 2, is_decoder=False)
    names = set(set_adapter_finetuning(m))
    expected = {"embeddings.weight", "position_embeddings.weight", "pred_layer.proj.bias",
                "layer_norm_emb.weight", "layer_norm_emb.bias"}
    expected |= {f"adapters_{a}.{i}.{j}.{p}" for a in (1, 2) for i in range(2) for j in (0, 2)
                 for p in ("weight", "bias")}
    assert names == expected
    assert {n for n, p in m.named_parameters() if p.requires_grad} == expected
    assert not m.lang_embeddings.weight.requires_grad and not m.attentions[0].q_lin.weight.requires_grad
    assert m.pred_layer.proj.weight.requires_grad  # tied to embeddings


def test_adapters_placement_changes_output_and_count():
    torch.manual_seed(0)
    with torch.device("meta"):  # shapes only
        m = TransformerModel(ModelConfig(dim=1024, n_layers=6, n_heads=8, adapter_size=256), 20, 2, False)
    n = sum(p.numel() for k, p in m.named_parameters() if k.startswith("adapters_"))
    assert n == 12 * 525_568  # RE-LM src/model/transformer.py: 2 adapters per layer; README: dim 1024, adapter_size 256
    small = TransformerModel(cfg(adapter_size=8), V, 2, False).eval()
    x, lengths = batch()
    h = small(x, lengths)
    with torch.no_grad():
        small.adapters_2[1][2].bias.add_(torch.randn(32))  # (a constant shift would vanish in the LayerNorm)
    assert not torch.allclose(h, small(x, lengths))


def test_checkpoint_roundtrip_and_errors(tmp_path):
    torch.manual_seed(0)
    c = cfg(adapter_size=4)
    enc, dec = TransformerModel(c, V, 2, False), TransformerModel(c, V, 2, True)
    words = [f"w{i}" for i in range(V)]
    p = tmp_path / "ck.pth"
    save_model(p, "unmt", {"encoder": enc, "decoder": dec}, c, ["en", "mk"], words, [0] * V, {"a": 1}, step=5)
    lm = load_model(p)
    assert lm.langs == ["en", "mk"] and lm.words == words and lm.model_config == c and lm.config == {"a": 1}
    assert lm.decoder.pred_layer.proj.weight is lm.decoder.embeddings.weight
    x, lengths = batch()
    enc.eval(), dec.eval()
    e = enc(x, lengths)
    assert torch.equal(lm.encoder(x, lengths), e)
    assert torch.equal(lm.decoder(x, lengths, causal=True, src_enc=e, src_len=lengths),
                       dec(x, lengths, causal=True, src_enc=e, src_len=lengths))
    assert safe_load(p)["step"] == 5
    # "module." prefixes are stripped
    raw = safe_load(p)
    raw["encoder"] = {"module." + k: v for k, v in raw["encoder"].items()}
    atomic_torch_save(raw, tmp_path / "ddp.pth")
    assert torch.equal(load_model(tmp_path / "ddp.pth").encoder(x, lengths), e)
    # truncated / missing / wrong kind of file
    data = p.read_bytes()
    (tmp_path / "trunc.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="trunc.pth"):
        load_model(tmp_path / "trunc.pth")
    with pytest.raises(CheckpointError, match="nothere.pth"):
        safe_load(tmp_path / "nothere.pth")
    with pytest.raises(ValueError):
        save_model(p, "mlm", {"encoder": enc}, c, ["en"], words, [0] * V, {})


def test_load_start_checks_once(tmp_path):
    """Format, kind, architecture and dictionary of a starting checkpoint: one error line naming the file."""
    c = cfg(adapter_size=4)
    words = Dictionary.from_tokens([f"w{i}" for i in range(V - 14)]).words
    p = tmp_path / "mlm.pt"
    save_model(p, "mlm", {"model": TransformerModel(c, V, 2, False)}, c, ["en", "mk"], words, [0] * V, {})
    assert load_start(p, ("mlm",), c, Dictionary.from_words(words))["kind"] == "mlm"
    for bad, match in ((cfg(dim=64), "model.dim = 32 but the run config says 64"), (cfg(pre_norm=True), "pre_norm"),
                       (cfg(adapter_size=8), "adapters of size 4"), (cfg(adapter_size=0), "adapters of size 4")):
        with pytest.raises(CheckpointError, match=match):
            load_start(p, ("mlm",), bad)
    with pytest.raises(CheckpointError, match=r"mlm.pt is a 'mlm' checkpoint, but a 'unmt' checkpoint is needed"):
        load_start(p, ("unmt",))
    with pytest.raises(CheckpointError, match=r"another dictionary \(40 words\).*\(41 words\); its words are the first"):
        load_start(p, ("mlm",), dico=Dictionary.from_words(words + ["extra"]))
    atomic_torch_save({"format": "other"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt is not a relm checkpoint"):
        load_start(tmp_path / "other.pt")
    state = safe_load(p)["model"]
    with pytest.raises(CheckpointError, match=r"^x.pt \[model\]: .*size mismatches \['embeddings.weight") as e:
        build_and_load(state, c, V + 1, 2, False, "x.pt [model]")
    assert "\n" not in str(e.value)


def test_atomic_save_leaves_no_temp(tmp_path):
    atomic_torch_save({"a": torch.ones(2)}, tmp_path / "sub" / "x.pth")
    assert [q.name for q in (tmp_path / "sub").iterdir()] == ["x.pth"]


@pytest.mark.parametrize("n_new", [0, 7])
def test_vocabulary_extension(n_new):
    torch.manual_seed(0)
    dim = 32
    hmr = TransformerModel(cfg(), V, 1, False)  # monolingual: no lang embeddings
    state = hmr.state_dict()
    ext = extend_state_dict(state, n_new, dim, torch.Generator().manual_seed(0))
    assert ext["embeddings.weight"] is ext["pred_layer.proj.weight"]
    assert torch.equal(ext["embeddings.weight"][:V], state["embeddings.weight"])
    assert torch.equal(ext["pred_layer.proj.bias"][:V], state["pred_layer.proj.bias"])
    new = ext["embeddings.weight"][V:]
    assert new.shape == (n_new, dim) and bool((new.abs() <= 1 / dim).all())
    assert torch.all(ext["pred_layer.proj.bias"][V:] == 0)

    model = TransformerModel(cfg(adapter_size=4), V + n_new, 2, False)
    fresh_lang = model.lang_embeddings.weight.detach().clone()
    fresh_adapter = model.adapters_1[0][0].weight.detach().clone()
    load_extended(model, state, n_new, V + n_new, torch.Generator().manual_seed(0))
    assert torch.equal(model.embeddings.weight.detach(), ext["embeddings.weight"])
    assert model.pred_layer.proj.weight is model.embeddings.weight
    assert torch.equal(model.lang_embeddings.weight, fresh_lang)
    assert torch.equal(model.adapters_1[0][0].weight, fresh_adapter)
    assert torch.equal(model.attentions[1].k_lin.weight, hmr.attentions[1].k_lin.weight)


def test_vocabulary_extension_mismatch_messages():
    hmr = TransformerModel(cfg(), V, 1, False)
    model = TransformerModel(cfg(), V + 5, 2, False)
    with pytest.raises(CheckpointError, match=rf"{V} words \+ n_new 4 = {V + 4}.* {V + 5} words"):
        load_extended(model, hmr.state_dict(), 4, V + 5)
    other = TransformerModel(cfg(n_layers=1), V, 1, False)
    with pytest.raises(CheckpointError, match="missing keys"):
        load_extended(model, other.state_dict(), 5, V + 5)


@pytest.mark.parametrize("redraw", [True, False])
def test_build_unmt_from_mlm(redraw):
    torch.manual_seed(0)
    mlm = TransformerModel(cfg(adapter_size=4), V, 2, False)
    enc, dec = build_unmt_from_mlm(mlm.state_dict(), mlm.cfg, V, 2, redraw_lang_emb=redraw)
    for m in (enc, dec):
        assert torch.equal(m.ffns[1].lin2.weight, mlm.ffns[1].lin2.weight)
        assert torch.equal(m.adapters_2[0][2].bias, mlm.adapters_2[0][2].bias)
        assert m.pred_layer.proj.weight is m.embeddings.weight
        assert torch.equal(m.lang_embeddings.weight, mlm.lang_embeddings.weight) != redraw
    assert enc.embeddings.weight.data_ptr() != dec.embeddings.weight.data_ptr()  # independent copies
    assert torch.all(dec.layer_norm15[0].weight == 1)
    assert dec.encoder_attn[0].q_lin.weight.shape == (32, 32)
