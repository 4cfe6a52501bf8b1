"""HALO-VAE training throughput on the CPU: samples/s of one optimizer step (forward + backward + Adam).

Configurations: the VAE alone (no HALO term), + the interpenetration term through the frozen HALO
base (the original's objective), + the contact term and the trained refinement net (this project's
default objective; the refinement objective evaluates HALO once more), + the optional
interpenetration term on prior samples (a third HALO evaluation).  Batches have the
real shapes (600 object points, 600 inside points); the grasps are the tests' curled skeletons
around spheres (throughput depends on the shapes and on how many HALO parts are active near the
object, not on the data's realism).

    python bench/bench_vae.py --halo-checkpoint outputs/halo_base_small/checkpoints/halo_base_best.pt
    python bench/bench_vae.py --halo-checkpoint model_best.pt --batch-size 256 --threads 2

Prints one line per configuration: samples/s and ms per step (median of the timed steps).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from halo.utils.allocator import tune_allocator  # noqa: E402
from lightning_modules.halo_vae import HaloVaeModule  # noqa: E402
from tests.fake_grasp_data import FakeGraspDataModule  # noqa: E402

#: The network of experiment=halo_vae_small (conf/experiment/halo_vae_small.yaml).
SMALL_VAE = {
    "object_hidden_dim": 64,
    "object_dim": 64,
    "encoder_dim": 128,
    "decoder_dim": 128,
    "refine_dim": 64,
}

CONFIGS = {
    "vae only": dict(use_inter_loss=False, use_contact_loss=False, train_refine_net=False),
    "+ inter (the original's objective)": dict(use_contact_loss=False, train_refine_net=False),
    "+ contact + refine (the default)": dict(),
    "+ prior inter (option)": dict(use_prior_inter_loss=True),
}


def bench(module: HaloVaeModule, batches: list[dict], warmup: int, steps: int) -> list[float]:
    optimizer = module.configure_optimizers()
    module.train()
    times = []
    for i in range(warmup + steps):
        batch = batches[i % len(batches)]
        t0 = time.perf_counter()
        total, _, _ = module.losses(batch, sample=True)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--halo-checkpoint", required=True, help="HALO base checkpoint (the frozen model)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--points", type=int, default=600, help="object and inside points per sample (default 600)"
    )
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--small", action="store_true", help="the CPU-sized network (experiment=halo_vae_small)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tune_allocator()
    torch.manual_seed(0)
    dm = FakeGraspDataModule(
        num_train=args.batch_size * 4,
        num_val=1,
        batch_size=args.batch_size,
        n_object_points=args.points,
        n_inside_points=args.points,
    )
    batches = list(dm.train_dataloader())
    vae = (
        {"object_hidden_dim": 128, "object_dim": 128, "encoder_dim": 128, "decoder_dim": 128}
        if args.small
        else {}
    )
    print(
        f"batch {args.batch_size}, {args.points} object + {args.points} inside points, torch threads {args.threads}, "
        f"{'small' if args.small else 'original-size'} VAE, HALO base {args.halo_checkpoint}"
    )
    for name, switches in CONFIGS.items():
        module = HaloVaeModule(vae=vae, halo_checkpoint=args.halo_checkpoint, lr=1e-4, **switches)
        times = bench(module, batches, args.warmup, args.steps)
        med = statistics.median(times)
        print(f"{name:38s} {args.batch_size / med:8.1f} samples/s   {med * 1000:7.1f} ms/step")


if __name__ == "__main__":
    main()
