"""diffusion_lib: the complete, small implementation behind every chapter of the course.

One idea per module:

| module        | what it holds                                                      |
| ------------- | ------------------------------------------------------------------ |
| `schedules`   | linear and cosine noise schedules (betas, alpha-bars, SNR, ...)    |
| `forward`     | q(x_t | x_{t-1}), q(x_t | x_0), the posterior, eps/x0/v conversions |
| `denoisers`   | one denoiser interface: any network, whatever it outputs, answers (x0_hat, eps_hat) at a level x = alpha x0 + sigma eps |
| `discrete`    | the papers' steps on DDPM's discrete schedule (DDPM, DDIM, DPM-Solver++(2M)) and their timesteps; DDIM inversion |
| `samplers`    | the noise levels each sampler visits, and the one sampler family over denoisers: ddpm, ddim, dpm-solver++, euler, heun, consistency |
| `objectives`  | the training objectives (ddpm, edm, flow): each one's draw of noise levels, loss, default sampler and ODE grid |
| `continuous`  | EDM and rectified flow on continuous noise levels (sigma, s): their losses, Karras sigmas, flow times, EDM's Algorithm 1 (`ode_sample`); the change of variables to DDPM |
| `distill`     | fewer steps from a flow model: reflow, progressive and consistency distillation; straightness of paths |
| `guidance`    | classifier-free guidance (around a denoiser, or an eps_fn) and autoguidance (around a network) |
| `text`        | captions measured from MNIST, the tokenizer, text encoder, cross-attention |
| `inpainting`  | filling masked pixels with any denoiser (replacement and RePaint)  |
| `autoencoder` | the KL-regularised autoencoder of latent diffusion (images to latents and back) |
| `latent`      | a latent model's autoencoder, scaled latents, decoding its samples |
| `ideal`       | exact denoisers for finite and Gaussian data sets                  |
| `unet`, `dit`, `mlp`, `pixelcnn` | the networks (`dit`: a diffusion transformer, MMDiT with text) |
| `models`      | the networks by name; adapters to the `eps_fn` samplers use        |
| `data`        | MNIST in [-1, 1] and 2-D toy data sets                             |
| `loop`        | the one training loop (`fit`): draw, loss, backward, AdamW, EMA; a run's state saved and restored whole |
| `training`    | `train`: a run's config, its batches, the DDPM loss (and min-SNR weighting); resumable and distributable |
| `checkpoint`  | safetensors checkpoints with their config; the committed models    |
| `classifier`  | a small MNIST classifier, the judge of generated digits            |
| `evaluation`  | MNIST-FID, class accuracy, histogram and diversity of samples      |
| `course`      | the chapters' widget callbacks, measurements and exercise checks   |
| `pipeline`    | checkpoint -> samples in one call: its denoiser, guidance, a sampler of the family, decoding (used by the command line); the checks the API and the CLI share; inpainting and image-to-image |
| `runtime`     | device choice, the one precision rule (bf16 autocast), the course's fast mode |

Code timestep `t` in 0..T-1 is the papers' t+1 throughout (see `schedules`). EDM and flow models
name noise by a real number instead (sigma, or s in [0, 1]); `continuous` says how each maps to t,
and `denoisers` puts all three on one Gaussian path, x = alpha x0 + sigma eps.
"""

from .checkpoint import CheckpointError, load_model, load_weights, pretrained, pretrained_snapshots, save_model
from .classifier import Classifier, ClassifierConfig, classify
from . import autoencoder, continuous, denoisers, distill, evaluation, inpainting, latent, samplers, text
from .data import load_fashion_mnist, load_folder, load_images, load_mnist, make_toy
from .evaluation import evaluate, fid, mnist_fid
from .forward import (eps_from_v, eps_from_x0, q_posterior, q_sample, q_step, to_eps, training_target, v_from_eps_x0,
                      x0_from_eps, x0_from_v)
from .guidance import guided_eps_fn
from .ideal import gaussian_eps_fn, gaussian_x0, ideal_eps_fn, ideal_x0
from .mlp import MLPConfig, MLPDenoiser
from .models import as_eps_fn, as_eps_model, build_model
from .dit import DiT, DiTConfig
from .pipeline import autoguided, generate, image_to_image, inpaint_images
from .pixelcnn import PixelCNN, PixelCNNConfig, binarize, pixelcnn_loss, pixelcnn_sample
from .runtime import fast_mode, pick_device
from .inpainting import inpaint, named_mask
from .samplers import (Trajectory, ddim_invert, ddim_step, ddim_timesteps, ddpm_step, dpm_solver_step, sample, sample_loop,
                       sampler_levels, slerp)
from .denoisers import Denoiser, Level, denoiser_for
from .schedules import Schedule, make_schedule
from .loop import EMA
from .training import TrainConfig, diffusion_loss, train
from .unet import UNet, UNetConfig, timestep_embedding
from .autoencoder import VAE, VAEConfig

__version__ = "0.1.0"
