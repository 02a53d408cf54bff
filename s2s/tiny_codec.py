"""The miniature's codec: a tiny SNAC whose codes carry the speech, fitted in seconds on a CPU.

A tiny SNAC with random weights codes speech badly: its encoder's latent is dominated by one
direction, and random quantizers spend their 256 codes on it, so few codes occur and the finer
ones follow from the coarse one. Training the codec end to end (reconstruction, VQ losses) takes
far longer than the miniature's build budget on two cores. Instead every quantizer is FITTED to
synthesized speech, level by level on the residual, in closed form:

1. `in_proj`: the top `codebook_dim` principal directions of the level's (pooled) input, centred;
2. `codebook`: spherical k-means of the projected latents, as SNAC compares them (cosine), each
   centroid scaled to the mean norm of the latents it stands for;
3. `out_proj`: the least-squares map from the chosen code vectors back to the level's input, so
   the next level quantizes what this one missed.

The encoder stays random (a fixed nonlinear filter bank) and so does the decoder: decoded audio is
not speech (`reconstruction_db` measures how far from it). What the fit buys is codes that vary with
what is said, which the miniature's TTS model (s2s/tiny_tts.py) learns to read from text.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def spherical_kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit centroids [k, D] of x [N, D] by cosine similarity, and each row's cluster [N].

    An empty cluster is re-seeded with a random row, so all k codes stay in use."""
    if len(x) < k:
        raise ValueError(f"spherical_kmeans: {len(x)} vectors cannot fill {k} clusters; fit on more speech")
    x = F.normalize(x, dim=1)
    c = x[torch.randperm(len(x), generator=generator)[:k]].clone()
    for _ in range(iters):
        assign = (x @ c.T).argmax(1)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        empty = torch.bincount(assign, minlength=k) == 0
        sums[empty] = x[torch.randint(len(x), (int(empty.sum()),), generator=generator)]
        c = F.normalize(sums, dim=1)
    return c, (x @ c.T).argmax(1)


@torch.no_grad()
def fit_quantizers(snac, waves24k: list[np.ndarray], seed: int = 0, iters: int = 25) -> list[int]:
    """Fit `snac`'s quantizers in place to the speech `waves24k` (float32 arrays at 24 kHz).

    Returns the distinct codes each codebook uses on that speech."""
    g = torch.Generator().manual_seed(seed)
    latents = [snac.encoder(snac.preprocess(torch.from_numpy(w).float().view(1, 1, -1))) for w in waves24k]
    # Concatenated in time: a pooling window crosses an utterance boundary at most once per utterance.
    residual = torch.cat(latents, dim=2)  # [1, D, T]
    used = []
    for q in snac.quantizer.quantizers:
        x = F.avg_pool1d(residual, q.stride, q.stride) if q.stride > 1 else residual
        rows = x[0].T  # [n, D]
        mean = rows.mean(0)
        _, _, v = torch.pca_lowrank(rows - mean, q=q.codebook_dim, center=False, niter=4)
        w = v[:, : q.codebook_dim].T.contiguous()  # [codebook_dim, D]
        q.in_proj.weight = w.unsqueeze(-1)  # weight norm's right_inverse sets its g and v
        q.in_proj.bias.copy_(-(w @ mean))
        z_e = q.in_proj(x)[0].T  # [n, codebook_dim]
        centroids, assign = spherical_kmeans(z_e, q.codebook_size, iters, g)
        counts = torch.bincount(assign, minlength=q.codebook_size).clamp_min(1)
        norms = torch.zeros(q.codebook_size).index_add_(0, assign, z_e.norm(dim=1)) / counts
        q.codebook.weight.copy_(centroids * norms[:, None])
        z_q, codes = q.decode_latents(z_e.T[None])
        design = torch.cat([z_q[0].T, torch.ones(len(rows), 1)], 1)
        solution = torch.linalg.lstsq(design, rows).solution  # [codebook_dim + 1, D]
        q.out_proj.weight = solution[:-1].T.contiguous().unsqueeze(-1)
        q.out_proj.bias.copy_(solution[-1])
        out = q.out_proj(z_q)
        if q.stride > 1:
            out = out.repeat_interleave(q.stride, dim=-1)
        residual = residual - out[..., : residual.shape[-1]]
        used.append(int(codes.unique().numel()))
    return used


@torch.no_grad()
def reconstruction_db(snac, waves24k: list[np.ndarray]) -> float:
    """Mean log-mel distance (dB, 80 mels) between speech and its trip through `snac`'s codes."""
    import torchaudio

    mel = torchaudio.transforms.MelSpectrogram(24000, n_fft=1024, hop_length=256, n_mels=80)
    dist = []
    for w in waves24k:
        x = torch.from_numpy(w).float().view(1, 1, -1)
        y = snac.decode(snac.encode(x))[..., : x.shape[-1]]
        a, b = (10 * torch.log10(mel(s.view(-1)).clamp_min(1e-8)) for s in (x, y))
        dist.append((a - b).abs().mean().item())
    return float(np.mean(dist))
