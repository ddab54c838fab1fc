"""Next-token quality of a masked forward against the dense one, per token (pure torch)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

CHUNK = 128  # positions per step: one [batch, 128, vocab] block in fp32 at a time


@dataclass(frozen=True)
class Reference:
    """The dense model's next-token log-probabilities (fp32) and most likely tokens, computed
    once per block of windows and compared with every arm."""

    log_p: Float[Tensor, "b t vocab"]
    top: Int[Tensor, "b t"]

    @classmethod
    def of(cls, logits: Float[Tensor, "b t vocab"], chunk: int = CHUNK) -> Reference:
        log_p = torch.cat(
            [
                torch.log_softmax(logits[:, i0 : i0 + chunk].float(), dim=-1)
                for i0 in range(0, logits.shape[1], chunk)
            ],
            dim=1,
        )
        return cls(log_p=log_p, top=log_p.argmax(-1))


def token_quality(
    reference: Reference,
    logits: Float[Tensor, "b t vocab"],
    targets: Int[Tensor, "b t"],
    chunk: int = CHUNK,
) -> dict[str, Tensor]:
    """Per token, in fp32 (on the CPU): `kl` = KL(dense || arm) of the next-token distributions
    in nats, `nll` = the arm's negative log-likelihood of the true next token, `top1` = whether
    the arm's most likely next token is the dense model's."""
    kl, nll, top1 = [], [], []
    for i0 in range(0, logits.shape[1], chunk):
        i1 = min(i0 + chunk, logits.shape[1])
        log_p = reference.log_p[:, i0:i1]
        log_q = torch.log_softmax(logits[:, i0:i1].float(), dim=-1)
        kl.append((log_p.exp() * (log_p - log_q)).sum(-1).clamp(min=0.0))
        nll.append(-log_q.gather(-1, targets[:, i0:i1, None].to(log_q.device))[..., 0])
        top1.append(log_q.argmax(-1) == reference.top[:, i0:i1])
    return {
        "kl": torch.cat(kl, dim=1).cpu(),
        "nll": torch.cat(nll, dim=1).cpu(),
        "top1": torch.cat(top1, dim=1).cpu(),
    }
