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

``--diagnose-inter RECORDS`` instead measures why the interpenetration term does (not) move
grasps, on the held-out ground-truth grasps of a records folder pushed into their objects by
0-3 cm along the object-centre -> wrist direction: interior points covered (occupancy > 0.5),
the thresholded (original) and soft term, and the gradient norm each weighted term puts on the
keypoints next to the keypoint term's at a 1 cm reconstruction error; also the same for the
hands shrunk by 25 % (the free decoder's bone lengths), which HALO reads as thinner hands.

    python bench/bench_vae.py --halo-checkpoint model_best.pt --diagnose-inter data/synthetic_grasps/records-<key>
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


def diagnose_inter(halo_checkpoint: str, records: str, n_inside: int = 300, seed: int = 0) -> None:
    import numpy as np

    from halo.grasp.halo_terms import interpenetration_loss
    from halo.grasp.records import grasp_object, load_objects
    from halo.grasp.vae import keypoint_loss
    from lightning_modules.halo_vae import load_frozen_halo

    halo, _ = load_frozen_halo(halo_checkpoint)
    names, objects = load_objects(records)
    rng = np.random.default_rng(seed)
    kp_all, pts_all = [], []
    for split in ("val", "test"):
        kp = np.load(f"{records}/{split}/keypoints.npy")
        oi = np.load(f"{records}/{split}/object_index.npy")
        rot = np.load(f"{records}/{split}/object_rotation.npy")
        tr = np.load(f"{records}/{split}/object_translation.npy")
        for i in rng.choice(len(kp), size=min(24, len(kp)), replace=False):
            obj = grasp_object(names[oi[i]], objects[names[oi[i]]])
            kp_all.append((kp[i] - tr[i]) @ rot[i])  # the centred template frame
            pts_all.append(obj.inside_points[rng.choice(len(obj.inside_points), n_inside, replace=False)])
    gt = torch.tensor(np.stack(kp_all), dtype=torch.float32)
    inside = torch.tensor(np.stack(pts_all), dtype=torch.float32)
    inward = -torch.nn.functional.normalize(gt[:, 0], dim=-1)[:, None]  # wrist -> object centre
    print(f"{len(gt)} held-out ground-truth grasps, {n_inside} interior points each, HALO {halo_checkpoint}")
    print(
        "shift_cm hand  covered/300  thr_loss  soft_loss  |grad| kp(w2,1cm)  thr(w4)  soft(w4)  soft-near64(w4)"
    )
    noise = torch.randn(gt.shape, generator=torch.Generator().manual_seed(0)) * 0.01 / 3**0.5
    for shrink in (1.0, 0.75):
        for shift in (0.0, 0.01, 0.02, 0.03):
            hand = gt[:, :1] + (gt - gt[:, :1]) * shrink + inward * shift
            with torch.no_grad():
                occ = halo(inside, hand, validate=False).occupancy
            covered = (occ > 0.5).float().sum(-1).mean().item()
            grads = []
            for kind in ("kp", "threshold", "soft", "near"):
                x = hand.clone().requires_grad_(True)
                if kind == "kp":
                    loss = 2.0 * keypoint_loss(x, (hand + noise).detach())
                else:
                    mode = "threshold" if kind == "threshold" else "soft"
                    loss = 4.0 * interpenetration_loss(
                        halo, x, inside, mode=mode, near_hand_points=64 if kind == "near" else None
                    )
                (g,) = torch.autograd.grad(loss, x, allow_unused=True)
                g = torch.zeros_like(x) if g is None else g
                grads.append((loss.item(), g.norm(dim=(1, 2)).mean().item()))
            print(
                f"{shift * 100:7.0f} {shrink:5.2f} {covered:9.1f} {grads[1][0] / 4:10.4f} {grads[2][0] / 4:9.4f}"
                f"      {grads[0][1]:8.3f} {grads[1][1]:9.3f} {grads[2][1]:9.3f} {grads[3][1]:11.3f}"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--halo-checkpoint", required=True, help="HALO base checkpoint (the frozen model)")
    p.add_argument("--diagnose-inter", metavar="RECORDS", help="measure the interpenetration term instead")
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
    if args.diagnose_inter:
        diagnose_inter(args.halo_checkpoint, args.diagnose_inter)
        return
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
