"""Greedy / beam decoding: incremental cache == full recomputation, beam 1 == greedy, output format."""
import pytest
import torch

from relm.config import ModelConfig
from relm.generate import generate_beam, generate_greedy
from relm.model.transformer import TransformerModel, reorder_cache

V, DIM, EOS, PAD = 30, 32, 1, 2


def setup(seed=0, eos_bias=None, **kw):
    """A random decoder whose outputs depend clearly on the source; eos_bias=None picks the first EOS bias for which
    greedy outputs have different lengths (some sentences stop early, some later)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(**{**dict(dim=DIM, n_layers=2, n_heads=4, max_positions=64), **kw})
    dec = TransformerModel(cfg, V, 2, is_decoder=True)
    with torch.no_grad():
        for name, p in dec.named_parameters():
            if "_lin" in name and p.dim() == 2:
                p.mul_(3.0)  # larger weights: less uniform outputs than the default init
        dec.pred_layer.proj.bias[PAD] -= 100  # a random model would otherwise emit specials
    src_len = torch.tensor([5, 3, 4, 1])
    src = 3 * torch.randn(4, 5, DIM)
    src[torch.arange(5)[None, :] >= src_len[:, None]] = 0
    base = dec.pred_layer.proj.bias[EOS].item()
    for bias in [eos_bias] if eos_bias is not None else [b / 2 for b in range(12)]:
        with torch.no_grad():
            dec.pred_layer.proj.bias[EOS] = base + bias
        if eos_bias is not None or len(set(generate_greedy(dec, src, src_len, 1, 12)[1].tolist())) > 1:
            return dec, src, src_len
    raise AssertionError("no EOS bias gives varied output lengths")


def greedy_without_cache(dec, src, src_len, lang, max_len):
    """Recompute the whole prefix at every step (no cache)."""
    dec.eval()
    bs = src.shape[0]
    out = torch.full((bs, 1), EOS)
    finished = torch.zeros(bs, dtype=torch.bool)
    with torch.no_grad():
        for cur in range(1, max_len):
            lengths = torch.full((bs,), cur)
            h = dec(out, lengths, torch.full_like(out, lang), causal=True, src_enc=src, src_len=src_len)
            nxt = dec.logits(h[:, -1]).argmax(-1)
            if cur == max_len - 1:
                nxt[:] = EOS
            out = torch.cat([out, torch.where(finished, torch.full_like(nxt, PAD), nxt)[:, None]], 1)
            finished |= nxt == EOS
            if finished.all():
                break
    return out


def check_format(tokens, lengths):
    for t, n in zip(tokens.tolist(), lengths.tolist()):
        assert t[0] == EOS and t[n - 1] == EOS and EOS not in t[1 : n - 1] and all(x == PAD for x in t[n:])


@pytest.mark.parametrize("kw", [dict(), dict(pre_norm=True, adapter_size=4)])
def test_cached_forward_equals_full_forward(kw):
    dec, src, src_len = setup(**kw)
    dec.eval()
    x = torch.randint(4, V, (4, 6))
    x[:, 0] = EOS
    langs = torch.ones_like(x)
    full = dec(x, torch.full((4,), 6), langs, causal=True, src_enc=src, src_len=src_len)
    cache = {"slen": 0}
    steps = [dec(x[:, :2], torch.full((4,), 2), langs[:, :2], causal=True, src_enc=src, src_len=src_len, cache=cache)]
    for a, b in [(2, 3), (3, 5), (5, 6)]:  # one or several new tokens per call
        steps.append(dec(x[:, a:b], torch.full((4,), b), langs[:, a:b], causal=True,
                         src_enc=src, src_len=src_len, cache=cache))
    assert cache["slen"] == 6 and cache["self.1"][0].shape == (4, 4, 6, DIM // 4)
    assert cache["cross.0"][0].shape == (4, 4, 5, DIM // 4)
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)
    reorder_cache(cache, torch.tensor([3, 3, 0, 1]))
    assert torch.equal(cache["self.0"][1][1], cache["self.0"][1][0])


@pytest.mark.parametrize("seed", [0, 1, 3])
def test_greedy_cache_equals_no_cache(seed):
    dec, src, src_len = setup(seed)
    dec.train()
    tokens, lengths = generate_greedy(dec, src, src_len, 1, max_len=12)
    assert dec.training  # mode restored
    ref = greedy_without_cache(dec, src, src_len, 1, 12)
    assert torch.equal(tokens, ref)
    check_format(tokens, lengths)
    assert lengths.tolist() == [int((t != PAD).sum()) for t in tokens]
    assert len(set(lengths.tolist())) > 1  # the test covers early stops


def test_greedy_per_sentence_max_len():
    dec, src, src_len = setup(eos_bias=-100)  # never stops by itself
    tokens, lengths = generate_greedy(dec, src, src_len, 0, max_len=torch.tensor([3, 7, 2, 5]))
    assert lengths.tolist() == [3, 7, 2, 5] and tokens.shape == (4, 7)
    check_format(tokens, lengths)
    full, _ = generate_greedy(dec, src, src_len, 0, max_len=7)
    assert torch.equal(tokens[1], full[1]) and torch.equal(tokens[3, :4], full[3, :4])


@pytest.mark.parametrize("early_stopping,length_penalty", [(True, 1.0), (False, 0.0)])
@pytest.mark.parametrize("seed", [0, 3])
def test_beam_1_equals_greedy(seed, early_stopping, length_penalty):
    dec, src, src_len = setup(seed)
    g, g_len = generate_greedy(dec, src, src_len, 1, max_len=12)
    b, b_len = generate_beam(dec, src, src_len, 1, beam_size=1, length_penalty=length_penalty,
                             early_stopping=early_stopping, max_len=12)
    assert torch.equal(b_len, g_len)
    assert torch.equal(b, g[:, : b.shape[1]])


@pytest.mark.parametrize("beam_size", [2, 4])
def test_beam_batch_equals_single_sentences(beam_size):
    """Cache reordering across sentences: a batch gives the same hypotheses as each sentence alone."""
    dec, src, src_len = setup(1)
    tokens, lengths = generate_beam(dec, src, src_len, 1, beam_size=beam_size, max_len=10)
    check_format(tokens, lengths)
    for i in range(4):
        n = int(src_len[i])
        t, l_ = generate_beam(dec, src[i : i + 1, :n], src_len[i : i + 1], 1, beam_size=beam_size, max_len=10)
        assert int(l_[0]) == int(lengths[i]) and torch.equal(t[0, : int(l_[0])], tokens[i, : int(l_[0])])



@pytest.mark.parametrize("seed", [0, 1])
def test_decoding_without_cache_gives_the_same_tokens(seed):
    """use_cache=False recomputes the whole prefix each step (the benchmark's reference): token-identical output."""
    dec, src, src_len = setup(seed)
    for decode in (lambda c: generate_greedy(dec, src, src_len, 1, 12, use_cache=c),
                   lambda c: generate_beam(dec, src, src_len, 1, beam_size=3, max_len=12, use_cache=c)):
        (tokens, lengths), (ref, ref_len) = decode(True), decode(False)
        assert torch.equal(tokens, ref) and torch.equal(lengths, ref_len)
        check_format(tokens, lengths)
