"""The XLM Transformer (encoder or decoder) in one file.

Parameter names and the forward computation follow XLM / RE-LM exactly (post-norm layers, learned positions, language
embeddings, output layer tied to the token embeddings, RE-LM's adapters), so their checkpoints load unchanged and give
the same outputs. Differences are in the API only: tensors are batch-first ([bs, slen]), attention goes through torch's
scaled_dot_product_attention, and the incremental-decoding cache is a plain dict (see `TransformerModel.forward`).
`pre_norm=True` is an extra (not in XLM) for fast CPU demos; it adds one final LayerNorm `layer_norm_final`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from relm.config import ModelConfig
from relm.tokens import EOS, PAD

LN_EPS = 1e-12  # XLM's LayerNorm eps


def embedding(num: int, dim: int, padding_idx: int | None = None) -> nn.Embedding:
    """XLM's Embedding(): N(0, dim^-0.5), pad row zeroed."""
    m = nn.Embedding(num, dim, padding_idx=padding_idx)
    nn.init.normal_(m.weight, mean=0.0, std=dim**-0.5)
    if padding_idx is not None:
        nn.init.constant_(m.weight[padding_idx], 0.0)
    return m


def sinusoidal_(weight: torch.Tensor) -> None:
    """XLM's fixed positions: sin on even dims, cos on odd dims, angle pos / 10000^(2*(j//2)/dim)."""
    n_pos, dim = weight.shape
    pos = torch.arange(n_pos, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)[None, :]
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    with torch.no_grad():
        weight[:, 0::2] = torch.sin(angle[:, 0::2]).to(weight.dtype)
        weight[:, 1::2] = torch.cos(angle[:, 1::2]).to(weight.dtype)
    weight.requires_grad_(False)


class MultiHeadAttention(nn.Module):
    """Self- or cross-attention with separate q/k/v/out projections (XLM key names)."""

    def __init__(self, n_heads: int, dim: int, dropout: float):
        super().__init__()
        assert dim % n_heads == 0, f"dim {dim} is not a multiple of n_heads {n_heads}"
        self.n_heads, self.dim, self.dropout = n_heads, dim, dropout
        self.q_lin = nn.Linear(dim, dim)
        self.k_lin = nn.Linear(dim, dim)
        self.v_lin = nn.Linear(dim, dim)
        self.out_lin = nn.Linear(dim, dim)

    def heads(self, t: torch.Tensor) -> torch.Tensor:  # [bs, len, dim] -> [bs, heads, len, d_head]
        bs, n, _ = t.shape
        return t.view(bs, n, self.n_heads, self.dim // self.n_heads).transpose(1, 2)

    def forward(self, x, mask, kv=None, cache=None, key=None, is_causal=False):
        """x [bs, qlen, dim]; mask: bool, broadcastable to [bs, heads, qlen, klen], True = may attend (None = all);
        is_causal: plain causal mask (qlen == klen), lets SDPA pick its fastest kernel.
        kv: encoder output for cross-attention (None = self-attention). With `cache`, self-attention appends its new
        k/v to cache[key]; cross-attention computes k/v once and reuses cache[key]."""
        q = self.heads(self.q_lin(x))
        if kv is None:
            k, v = self.heads(self.k_lin(x)), self.heads(self.v_lin(x))
            if cache is not None:
                if key in cache:
                    k_old, v_old = cache[key]
                    k, v = torch.cat([k_old, k], dim=2), torch.cat([v_old, v], dim=2)
                cache[key] = (k, v)
        elif cache is not None and key in cache:
            k, v = cache[key]
        else:
            k, v = self.heads(self.k_lin(kv)), self.heads(self.v_lin(kv))
            if cache is not None:
                cache[key] = (k, v)
        p = self.dropout if self.training else 0.0
        # scale 1/sqrt(d_head) and dropout on the attention weights, as XLM
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal)
        bs, _, qlen, _ = out.shape
        return self.out_lin(out.transpose(1, 2).reshape(bs, qlen, self.dim))


class TransformerFFN(nn.Module):
    """lin2(act(lin1(x))) followed by dropout (no dropout after the activation, as XLM)."""

    def __init__(self, dim: int, hidden: int, dropout: float, gelu: bool):
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)
        self.dropout, self.gelu = dropout, gelu

    def forward(self, x):
        x = self.lin1(x)
        x = F.gelu(x) if self.gelu else F.relu(x)  # F.gelu default = exact erf form
        return F.dropout(self.lin2(x), p=self.dropout, training=self.training)


class PredLayer(nn.Module):
    """Output projection; its weight is the token-embedding matrix (tied), its bias is its own."""

    def __init__(self, dim: int, n_words: int):
        super().__init__()
        self.proj = nn.Linear(dim, n_words, bias=True)


def adapter(dim: int, size: int) -> nn.Sequential:
    """RE-LM adapter: down-projection, ReLU, up-projection, default nn.Linear init (no identity init)."""
    return nn.Sequential(nn.Linear(dim, size), nn.ReLU(), nn.Linear(size, dim))


class TransformerModel(nn.Module):
    def __init__(self, cfg: ModelConfig, n_words: int, n_langs: int, is_decoder: bool, pad_index: int = PAD,
                 eos_index: int = EOS):
        super().__init__()
        self.cfg, self.n_words, self.n_langs, self.is_decoder = cfg, n_words, n_langs, is_decoder
        self.pad_index, self.eos_index = pad_index, eos_index
        self.dim, self.n_layers, self.dropout = cfg.dim, cfg.n_layers, cfg.dropout
        self.use_adapters = cfg.adapter_size > 0
        dim = cfg.dim

        # registration order = XLM's (state-dict order)
        self.position_embeddings = embedding(cfg.max_positions, dim)
        if cfg.sinusoidal:
            sinusoidal_(self.position_embeddings.weight)
        if n_langs > 1 and cfg.use_lang_emb:
            self.lang_embeddings = embedding(n_langs, dim)
        self.embeddings = embedding(n_words, dim, padding_idx=pad_index)
        self.layer_norm_emb = nn.LayerNorm(dim, eps=LN_EPS)

        self.attentions = nn.ModuleList()
        self.layer_norm1 = nn.ModuleList()
        self.ffns = nn.ModuleList()
        self.layer_norm2 = nn.ModuleList()
        if is_decoder:
            self.layer_norm15 = nn.ModuleList()
            self.encoder_attn = nn.ModuleList()
        if self.use_adapters:
            self.adapters_1 = nn.ModuleList()
            self.adapters_2 = nn.ModuleList()
        for _ in range(cfg.n_layers):
            self.attentions.append(MultiHeadAttention(cfg.n_heads, dim, cfg.attention_dropout))
            self.layer_norm1.append(nn.LayerNorm(dim, eps=LN_EPS))
            if is_decoder:
                self.layer_norm15.append(nn.LayerNorm(dim, eps=LN_EPS))
                self.encoder_attn.append(MultiHeadAttention(cfg.n_heads, dim, cfg.attention_dropout))
            self.ffns.append(TransformerFFN(dim, 4 * dim, cfg.dropout, cfg.gelu))
            self.layer_norm2.append(nn.LayerNorm(dim, eps=LN_EPS))
            if self.use_adapters:
                self.adapters_1.append(adapter(dim, cfg.adapter_size))
                self.adapters_2.append(adapter(dim, cfg.adapter_size))
        if cfg.pre_norm:
            self.layer_norm_final = nn.LayerNorm(dim, eps=LN_EPS)

        self.pred_layer = PredLayer(dim, n_words)
        self.pred_layer.proj.weight = self.embeddings.weight  # tied (XLM share_inout_emb, default True)

    def forward(self, x, lengths, langs=None, causal=False, src_enc=None, src_len=None, cache=None, positions=None):
        """x [bs, slen] token ids, lengths [bs], langs [bs, slen] or None -> hidden states [bs, slen, dim].

        causal: decoder self-attention sees only earlier positions (and no key-padding mask, like XLM: pads come after
        every real query). src_enc [bs, src_slen, dim] / src_len [bs]: encoder output for the decoder's cross-attention.
        cache: incremental decoding (decoder, causal). Start with {"slen": 0}; then x holds only the NEW tokens,
        `lengths` are the total lengths (old + new), positions continue at cache["slen"]. The cache stores per layer
        "self.{i}" -> (k, v) and "cross.{i}" -> (k, v), each [bs, heads, len, d_head]; `reorder_cache` selects rows.
        """
        bs, slen = x.shape
        past = cache["slen"] if cache is not None else 0
        assert cache is None or causal, "the cache is for causal (decoder) self-attention"
        assert (src_enc is None) == (src_len is None) and (src_enc is None or self.is_decoder)
        device = x.device
        steps = torch.arange(past, past + slen, device=device)
        pad_mask = steps[None, :] < lengths.to(device)[:, None]  # [bs, slen], True = real token
        is_causal = causal and past == 0
        if causal:  # explicit mask only for several new tokens after a cache; one new token may see everything
            attn_mask = None if past == 0 or slen == 1 else steps[:, None] >= torch.arange(past + slen, device=device)
        else:
            attn_mask = pad_mask[:, None, None, :]
        if positions is None:
            if past + slen > self.cfg.max_positions:
                raise ValueError(f"sequence length {past + slen} > max_positions {self.cfg.max_positions}")
            positions = steps[None, :].expand(bs, slen)

        h = self.embeddings(x) + self.position_embeddings(positions)
        if langs is not None and hasattr(self, "lang_embeddings"):
            h = h + self.lang_embeddings(langs)
        h = F.dropout(self.layer_norm_emb(h), p=self.dropout, training=self.training)
        keep = pad_mask.unsqueeze(-1).to(h.dtype)
        h = h * keep
        if src_enc is not None:
            src_mask = torch.arange(src_enc.size(1), device=device)[None, :] < src_len.to(device)[:, None]
            src_mask = src_mask[:, None, None, :]

        pre = self.cfg.pre_norm
        for i in range(self.n_layers):
            # self-attention (+ adapter with its own residual)
            a = self.attentions[i](self.layer_norm1[i](h) if pre else h, attn_mask, cache=cache, key=f"self.{i}",
                                   is_causal=is_causal)
            a = F.dropout(a, p=self.dropout, training=self.training)
            if self.use_adapters:
                a = self.adapters_1[i](a) + a
            h = h + a if pre else self.layer_norm1[i](h + a)
            # cross-attention (decoder only, no adapter)
            if self.is_decoder and src_enc is not None:
                c = self.encoder_attn[i](self.layer_norm15[i](h) if pre else h, src_mask, kv=src_enc, cache=cache,
                                         key=f"cross.{i}")
                c = F.dropout(c, p=self.dropout, training=self.training)
                h = h + c if pre else self.layer_norm15[i](h + c)
            # feed-forward (+ adapter)
            f = self.ffns[i](self.layer_norm2[i](h) if pre else h)
            if self.use_adapters:
                f = self.adapters_2[i](f) + f
            h = h + f if pre else self.layer_norm2[i](h + f)
            h = h * keep
        if pre:
            h = self.layer_norm_final(h) * keep
        if cache is not None:
            cache["slen"] = past + slen
        return h

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Scores over the vocabulary, [..., n_words]."""
        return self.pred_layer.proj(h)


def reorder_cache(cache: dict, index: torch.Tensor) -> None:
    """Select/reorder the batch rows of an incremental-decoding cache in place (beam search)."""
    for k, v in cache.items():
        if k != "slen":
            cache[k] = (v[0].index_select(0, index), v[1].index_select(0, index))


ADAPTER_TRAINABLE_PREFIXES = ("adapters_", "embeddings.", "position_embeddings.", "pred_layer.", "layer_norm_emb.")


def set_adapter_finetuning(model: nn.Module, train_lang_emb: bool = False) -> list[str]:
    """RE-LM adapter fine-tuning (train.py): freeze everything except adapters, token embeddings (= tied output matrix),
    positions, output bias and embedding LayerNorm; lang_embeddings stay frozen unless train_lang_emb. Returns the
    trainable names. Sinusoidal (fixed) positions stay frozen."""
    model = getattr(model, "module", model)
    prefixes = ADAPTER_TRAINABLE_PREFIXES + (("lang_embeddings.",) if train_lang_emb else ())
    names = []
    for name, p in model.named_parameters():
        on = name.startswith(prefixes)
        if name.startswith("position_embeddings.") and model.cfg.sinusoidal:
            on = False
        p.requires_grad_(on)
        if on:
            names.append(name)
    return names
