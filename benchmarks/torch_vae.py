"""The plain PyTorch reference for `benchmarks.vae_speed`: the paper's ConvVAE, trained as usual.

Same architecture, loss and optimizer as `dreamenv.vae.VAE` with
`train.vae.vae_loss` (NHWC frames in, NCHW inside, as a PyTorch user would write it).
"""

from __future__ import annotations

import torch
from torch import nn


class TorchVAE(nn.Module):
    """Encoder: 4 convs k4 s2 (32, 64, 128, 256) -> mu, logvar; decoder: dense 1024 -> 4 deconvs."""

    def __init__(self, latent_dim: int = 32):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 32, 4, 2), nn.ReLU(),
            nn.Conv2d(32, 64, 4, 2), nn.ReLU(),
            nn.Conv2d(64, 128, 4, 2), nn.ReLU(),
            nn.Conv2d(128, 256, 4, 2), nn.ReLU(),
            nn.Flatten(),
        )
        self.mu = nn.Linear(1024, latent_dim)
        self.logvar = nn.Linear(1024, latent_dim)
        self.fc = nn.Linear(latent_dim, 1024)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(1024, 128, 5, 2), nn.ReLU(),
            nn.ConvTranspose2d(128, 64, 5, 2), nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 6, 2), nn.ReLU(),
            nn.ConvTranspose2d(32, 3, 6, 2), nn.Sigmoid(),
        )

    def forward(self, frames):
        # frames: [B, 64, 64, 3] in [0, 1] -> recon [B, 64, 64, 3], mu, logvar [B, latent]
        h = self.encoder(frames.permute(0, 3, 1, 2))
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        recon = self.decoder(self.fc(z).view(-1, 1024, 1, 1))
        return recon.permute(0, 2, 3, 1), mu, logvar


def loss_fn(frames, recon, mu, logvar, kl_tolerance: float = 0.5):
    """Per-image summed squared error + KL clamped below at kl_tolerance·latent, batch-averaged."""
    r_loss = (recon - frames).square().sum(dim=(1, 2, 3)).mean()
    kl = -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(dim=1)
    return r_loss + kl.clamp(min=kl_tolerance * mu.shape[1]).mean()


def make_step(model: TorchVAE, lr: float):
    """-> step(frames) doing one Adam update and returning the loss tensor."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def step(frames):
        recon, mu, logvar = model(frames)
        loss = loss_fn(frames, recon, mu, logvar)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step
