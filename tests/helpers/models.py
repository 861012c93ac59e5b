"""Small random-init models of every architecture family of the paper, and a brute-force reference."""

from __future__ import annotations

import timm
import torch
import transformers
from torch import nn
from torch.func import functional_call, grad


def brute_force_probe_gram(model: nn.Module, inputs, probes: torch.Tensor) -> torch.Tensor:
    """G[m,i,m',j] = ⟨∂(u_m·f(x_i))/∂θ, ∂(u_m'·f(x_j))/∂θ⟩ from per-sample torch.func gradients."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    is_map = isinstance(inputs, dict)
    n = next(iter(inputs.values())).shape[0] if is_map else inputs.shape[0]
    rows = []
    for i in range(n):

        def f(p, i=i):
            if is_map:
                return functional_call(model, p, (), {k: v[i : i + 1] for k, v in inputs.items()})[0]
            return functional_call(model, p, (inputs[i : i + 1],))[0]

        per_probe = []
        for u in probes:
            g = grad(lambda p, u=u: (f(p) * u).sum())(params)
            per_probe.append(torch.cat([v.reshape(-1) for v in g.values()]))
        rows.append(torch.stack(per_probe))
    g = torch.stack(rows, 1)  # (M, N, P)
    return torch.einsum("mip,njp->minj", g, g)


class MeanPooled(nn.Module):
    """A transformers encoder with masked mean pooling and batch-shaped position ids."""

    def __init__(self, model: nn.Module, *, position_ids: bool = True) -> None:
        super().__init__()
        self.model = model
        self.position_ids = position_ids

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        kw = {}
        if self.position_ids:
            kw["position_ids"] = torch.arange(input_ids.shape[1]).expand_as(input_ids)
        h = self.model(input_ids=input_ids, attention_mask=attention_mask, **kw).last_hidden_state
        w = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * w).sum(1) / w.sum(1)


def _vision(name: str, **kw) -> nn.Module:
    return timm.create_model(name, pretrained=False, num_classes=0, **kw)


def vision_models() -> dict[str, nn.Module]:
    return {
        "resnet": timm.models.resnet.ResNet(
            timm.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=0, channels=(8, 8, 16, 16), stem_width=8
        ),
        "vit": _vision(
            "vit_tiny_patch16_224",
            img_size=32,
            patch_size=8,
            embed_dim=16,
            depth=2,
            num_heads=2,
            init_values=0.1,
        ),
        "deit": _vision(
            "deit_tiny_distilled_patch16_224", img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2
        ),
        "convnext": _vision("convnext_atto", dims=(8, 8, 16, 16), depths=(1, 1, 1, 1)),
        "efficientnet": timm.models.efficientnet._gen_efficientnet_lite(
            "tf_efficientnet_lite0", channel_multiplier=0.25, depth_multiplier=0.25, num_classes=0
        ),
        "mixer": timm.models.mlp_mixer.MlpMixer(
            num_classes=0, img_size=32, patch_size=8, embed_dim=16, num_blocks=2
        ),
        "swin": _vision(
            "swin_tiny_patch4_window7_224",
            img_size=32,
            patch_size=4,
            window_size=4,
            embed_dim=8,
            depths=(1, 1),
            num_heads=(1, 2),
        ),
    }


def language_models() -> dict[str, nn.Module]:
    c = transformers
    small = dict(vocab_size=100)
    configs = {
        "bert": c.BertConfig(
            **small, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=20
        ),
        "distilbert": c.DistilBertConfig(**small, dim=16, n_layers=2, n_heads=2, hidden_dim=20),
        "roberta": c.RobertaConfig(
            **small, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=20
        ),
        "albert": c.AlbertConfig(
            **small,
            embedding_size=8,
            hidden_size=16,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=20,
        ),
        "gpt2": c.GPT2Config(**small, n_embd=16, n_layer=2, n_head=2, bos_token_id=1, eos_token_id=2),
        "xlnet": c.XLNetConfig(**small, d_model=16, n_layer=2, n_head=2, d_inner=20),
    }
    out = {}
    for name, cfg in configs.items():
        kw = {} if name == "xlnet" else {"attn_implementation": "eager"}
        out[name] = MeanPooled(c.AutoModel.from_config(cfg, **kw), position_ids=name != "xlnet")
    return out


def text_batch(n: int = 3, t: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 90, (n, t), generator=gen)
    mask = torch.ones(n, t, dtype=torch.long)
    for i in range(n):
        mask[i, t - i :] = 0 if i else 1  # ragged lengths: padding is masked
    return {"input_ids": ids, "attention_mask": mask}


def image_batch(n: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def factored_text_models() -> dict[str, nn.Module]:
    """Text encoders whose token layers all take the factored (ghost) form on sequences of ≤ 3 tokens
    (``T² (a + b) < a b``): BERT (nn.Linear), GPT-2 (transformers' Conv1D) and ALBERT, whose one shared layer
    is called twice per sample (6 positions). Every embedding table is factored in any case."""
    c = transformers
    small = dict(vocab_size=30, max_position_embeddings=8)
    configs = {
        "bert": c.BertConfig(**small, hidden_size=48, num_hidden_layers=1, num_attention_heads=2, intermediate_size=96),
        "gpt2": c.GPT2Config(
            vocab_size=30, n_positions=8, n_embd=48, n_layer=1, n_head=2, bos_token_id=1, eos_token_id=2
        ),
        "albert": c.AlbertConfig(
            **small,
            embedding_size=32,
            hidden_size=96,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=192,
        ),
    }
    return {
        name: MeanPooled(c.AutoModel.from_config(cfg, attn_implementation="eager")) for name, cfg in configs.items()
    }


def short_text_batch(lengths: tuple[int, ...] = (3, 2, 3, 1, 3, 2), vocab: int = 12, seed: int = 0):
    """Ragged sequences of at most 3 tokens from a few ids (rows of the tables repeat across samples)."""
    gen = torch.Generator().manual_seed(seed)
    t = max(lengths)
    ids = torch.randint(3, vocab, (len(lengths), t), generator=gen)
    mask = (torch.arange(t) < torch.tensor(lengths)[:, None]).long()
    return {"input_ids": ids, "attention_mask": mask}
