"""The training forward: an ``nn.Module`` that holds a :class:`~pcvos.PCVOS` and composes its stages.

Per-clip training (PCVOS), for a sample of a reference frame and ``num_clips`` clips of L frames:

1. keys of every frame are encoded in one batch;
2. the reference frame's values come from its ground-truth mask (aggregated like at inference);
3. clip 1 reads the memory (reference) with a **full softmax** over all memory positions, as STCN
   trains (top-k is inference-only) so the read is differentiable everywhere; ICR refines the
   clip's read-outs if the model has it (and ``use_refine``); the decoder predicts every frame;
   soft aggregation turns the K object logits into K + 1 class logits;
4. the last frame of clip 1 becomes memory, its values encoded from its *predicted* soft
   probabilities (gradients flow through them unless ``detach_memory_mask``);
5. clip 2 reads the reference plus that frame, and so on. PMM is not used in training.

Frame-wise training (STCN, the "Trad." ablation) is the same procedure with L = 1: three frames,
the second becomes memory for the third.

Object slots: a batch holds up to K objects per sample (``valid`` (B, K)); slots are filled in
order, so sample b uses slots ``0 .. n_b - 1`` and the padded slots get logits of -1e4 in the
aggregated output (they never win and add nothing to the cross-entropy).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from pcvos.model.network import PCVOS, KeyFeatures, aggregate

__all__ = ["PerClipTrainer", "read_full", "aggregate_logits", "PAD_LOGIT"]

PAD_LOGIT = -1e4


def read_full(mem_key: torch.Tensor, mem_val: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Differentiable memory read with a softmax over all memory positions.

    ``mem_key`` (B, Ck, M), ``mem_val`` (B, D, M), ``query`` (B, Ck, Q) -> read-out (B, D, Q).
    Affinity s(i, j) = (2 k_i·q_j − |k_i|²) / sqrt(Ck), softmax over i (the memory axis).
    Computed in float32 (it is the numerically delicate part under AMP).
    """
    ck = mem_key.shape[1]
    with torch.autocast(mem_key.device.type, enabled=False):
        k = mem_key.float()
        q = query.float()
        aff = (2 * torch.bmm(k.transpose(1, 2), q) - k.pow(2).sum(1).unsqueeze(2)) / math.sqrt(
            ck
        )  # (B, M, Q)
        w = aff.softmax(dim=1)
        return torch.bmm(mem_val.float(), w).to(mem_val.dtype)


def aggregate_logits(obj_logits: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Object logits -> the K + 1 class logits whose softmax is :func:`pcvos.model.network.aggregate`
    of the sigmoid probabilities (background first along ``dim``)."""
    prob = torch.sigmoid(obj_logits.float())
    bg = torch.prod(1 - prob, dim=dim, keepdim=True)
    p = torch.cat([bg, prob], dim=dim).clamp(1e-7, 1 - 1e-7)
    return torch.log(p / (1 - p))


class PerClipTrainer(nn.Module):
    """Wraps a PCVOS for training; ``forward(frames, masks, valid)`` runs one sample batch.

    ``clip_len``: frames per clip (N = 3 in the paper; 1 gives STCN's frame-wise training).
    The number of clips follows from the sample length: ``(T - 1) / clip_len``.
    """

    def __init__(
        self,
        net: PCVOS,
        clip_len: int = 3,
        use_refine: bool = True,
        detach_memory_mask: bool = False,
        freeze_bn: bool = True,
    ) -> None:
        super().__init__()
        self.net = net
        self.clip_len = int(clip_len)
        self.use_refine = bool(use_refine) and net.has_refiner
        self.detach_memory_mask = bool(detach_memory_mask)
        self.freeze_bn = bool(freeze_bn)

    def train(self, mode: bool = True) -> PerClipTrainer:
        super().train(mode)
        if mode and self.freeze_bn:
            # STCN trains with frozen BatchNorm statistics (small batches); affine parameters still learn
            for m in self.net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    # -- pieces ---------------------------------------------------------------------------------
    def _values(self, images: torch.Tensor, f16: torch.Tensor, obj_probs: torch.Tensor) -> torch.Tensor:
        """One frame per sample: ``images`` (B, 3, H, W) normalised, ``f16`` (B, C, h, w), ``obj_probs``
        (B, K, H, W) aggregated object probabilities -> values (B, K, Cv, h, w).

        The same computation as :meth:`PCVOS.encode_value`, batched over samples.
        """
        b, k = obj_probs.shape[:2]
        probs = obj_probs.transpose(0, 1)  # object-major (K, B, H, W)
        others = probs.sum(0, keepdim=True) - probs if k > 1 else torch.zeros_like(probs)
        imgs = images.unsqueeze(0).expand(k, *images.shape).flatten(0, 1)
        # the key features are given once per frame: the fusion computes their part once for all objects
        v = self.net.value_encoder(
            imgs, f16, probs.flatten(0, 1).unsqueeze(1), others.flatten(0, 1).unsqueeze(1)
        )
        return v.view(k, b, *v.shape[1:]).transpose(0, 1)

    @staticmethod
    def _flat(x: torch.Tensor) -> torch.Tensor:
        """(B, T, C, h, w) -> (B, C, T*h*w)."""
        return x.transpose(1, 2).flatten(2)

    def forward(self, frames: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor) -> dict[str, Any]:
        """``frames`` (B, T, 3, H, W) RGB in [0, 1]; ``masks`` (B, T, K, H, W) ground truth (only the
        reference frame's is used as input); ``valid`` (B, K).

        Returns ``logits`` (B, T-1, K+1, H, W) aggregated class logits of frames 1..T-1 (padded
        slots at -1e4), ``probs`` their softmax, ``clips`` the frame ranges (into those T-1) of each
        clip.
        """
        b, t, _, hh, ww = frames.shape
        kmax = masks.shape[2]
        L = self.clip_len
        if (t - 1) % L or t < 1 + L:
            raise ValueError(f"a sample of {t} frames is not a reference + clips of {L} frames")
        n_clips = (t - 1) // L
        net = self.net
        images = net.normalize(frames.flatten(0, 1))  # (B*T, 3, H, W)
        feats = net.encode_key(images, with_local=self.use_refine)

        def unflat(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, t, *x.shape[1:])

        key, thin, f16, f8, f4 = (unflat(x) for x in (feats.key, feats.thin, feats.f16, feats.f8, feats.f4))
        local = None if feats.local is None else unflat(feats.local)  # ICR keys: only with use_refine
        images = images.view(b, t, *images.shape[1:])
        counts = [int(n) for n in valid.sum(1).tolist()]
        validf = valid.to(frames.dtype)[:, :, None, None]

        # reference frame: values from the (aggregated) ground truth
        ref_obj = masks[:, 0] * validf
        ref_probs = aggregate(ref_obj, dim=1)[:, 1:]
        mem_keys = [key[:, 0:1]]  # each (B, 1, Ck, h, w)
        mem_vals = [
            self._values(images[:, 0], f16[:, 0], ref_probs * validf).unsqueeze(2)
        ]  # (B, K, 1, Cv, h, w)

        out_logits, clips = [], []
        for c in range(n_clips):
            idx = list(range(1 + c * L, 1 + (c + 1) * L))
            mk = self._flat(torch.cat(mem_keys, 1))  # (B, Ck, M)
            mv = torch.cat(mem_vals, 2)  # (B, K, Tm, Cv, h, w)
            cv, h, w = mv.shape[3:]
            mv = mv.permute(0, 1, 3, 2, 4, 5).reshape(b, kmax * cv, -1)  # (B, K*Cv, M)
            q = self._flat(key[:, idx[0] : idx[-1] + 1])  # (B, Ck, L*h*w)
            r = read_full(mk, mv, q).view(b, kmax, cv, L, h, w).transpose(2, 3)  # (B, K, L, Cv, h, w)
            per_sample = []
            for i in range(b):
                n = counts[i]
                ri = r[i, :n]
                sl = slice(idx[0], idx[-1] + 1)
                if local is not None:
                    ri = net.refine(local[i, sl], ri)
                fi = KeyFeatures(key[i, sl], thin[i, sl], None, f16[i, sl], f8[i, sl], f4[i, sl])
                obj = net.decode(ri, fi)  # (n, L, H, W)
                agg = aggregate_logits(obj, dim=0)  # (n+1, L, H, W)
                if n < kmax:
                    agg = torch.cat([agg, agg.new_full((kmax - n, *agg.shape[1:]), PAD_LOGIT)])
                per_sample.append(agg.transpose(0, 1))  # (L, K+1, H, W)
            clip_logits = torch.stack(per_sample)  # (B, L, K+1, H, W)
            out_logits.append(clip_logits)
            clips.append(list(range(c * L, (c + 1) * L)))
            if c + 1 < n_clips:
                last = idx[-1]
                prob = torch.softmax(clip_logits[:, -1], dim=1)[:, 1:] * validf  # (B, K, H, W)
                if self.detach_memory_mask:
                    prob = prob.detach()
                mem_keys.append(key[:, last : last + 1])
                mem_vals.append(
                    self._values(images[:, last], f16[:, last], prob.to(images.dtype)).unsqueeze(2)
                )
        logits = torch.cat(out_logits, 1)
        return {"logits": logits, "probs": torch.softmax(logits.float(), dim=2), "clips": clips}
