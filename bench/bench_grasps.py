"""Grasp quality per method on held-out synthetic objects and on real object meshes: one table.

Stages (each caches its outputs under ``--out``, so a rerun only does what is missing):

``train``: the CPU-sized ablation.  For every seed, two HALO-VAEs with exactly the settings of
``experiment=halo_vae_small`` (read from conf/model/halo_vae.yaml + the experiment's overrides:
kinematic decoder, rigid soft HALO term on reconstructions and prior samples, prior contact),
trained for ``--steps`` steps (the recipe's 1500) on the synthetic grasp records (one thread, a
plain loop over ``HaloVaeModule.losses``: no Lightning Trainer, no validation), identical except
for the HALO term: ``nointer`` (no interpenetration terms) and ``inter`` (the recipe).

``choice``: which refined hands ``halo generate grasps --oversample K`` should keep: K x ``--grasps``
fitted-z draws per object and seed, every one refined (``--grips-mm``, ``--supports``: their first
values) and simulated; per K of ``--oversample``, the first n against the n most balanced and the n
best by balance + hold residual (:func:`halo.grasp.selection.choose_grasps` with gravity -z), on the
same draws (cached under ``--out/choice``).

``pushed``: the `halo refine grasps` target: held-out ground-truth grasps pushed palm-first
into their objects until they overlap by 4-12 cm³, refined; volume before / after, contact,
displacement.

``table``: for each object set (the 5 held-out synthetic objects; real meshes shipped inside
installed pip packages, rescaled to a graspable size) and each method (VAE without the HALO
term / with it / + test-time refinement through HALO (:func:`halo.grasp.refine.refine_grasps`),
one row per ``--margins`` x ``--grips-mm`` value, each also with ``--oversample`` K (K x ``--grasps``
drawn, all refined, the refined hands most likely to hold kept, as `halo generate grasps --oversample`:
:func:`halo.grasp.selection.choose_grasps`, with the support axis as gravity) / the training grasps,
raw and, with ``--refine-training``, refined), ``--grasps`` sampled grasps per object
per seed are meshed with HALO and scored (:func:`halo.grasp.pipeline.evaluate_grasp`):
interpenetration volume (1 mm voxels; mean +- s.e. over grasps), depth, contact ratio (5 mm),
pybullet simulation displacement (``--simulate``), k-means entropy and cluster size, seconds per
grasp (sampling + refinement, batched, meshing excluded), and the skeleton's bone-length
standard deviation (mean over the 20 bones, cm).  Also the seed-level ablation (volume per seed,
mean +- s.e. over seeds) and a before | after refinement render.

    python bench/bench_grasps.py train --halo-checkpoint model_best.pt --records data/synthetic_grasps/records-<key>
    python bench/bench_grasps.py pushed --halo-checkpoint model_best.pt --records ... --grasps 4
    python bench/bench_grasps.py choice --halo-checkpoint model_best.pt --records ... --grasps 8 \
        --oversample 1 2 4 --grips-mm 1 --supports z- --configs inter
    python bench/bench_grasps.py table --halo-checkpoint model_best.pt --records data/synthetic_grasps/records-<key>
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from halo.cli.options import GRAVITY_AXES  # noqa: E402
from halo.grasp.kinematics import bone_lengths  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: --supports values: "z-" is `halo refine grasps --support-axis=-z` (a leading '-' would read as an option).
SUPPORT_AXES = {"none": None, **{axis[1] + axis[0]: direction for axis, direction in GRAVITY_AXES.items()}}


def recipe_model_settings() -> tuple[dict, dict]:
    """HaloVaeModule keyword arguments and the data settings of ``experiment=halo_vae_small``, read
    from the Hydra configs themselves (conf/model/halo_vae.yaml + the experiment's overrides), so
    the bench trains exactly what the README's recipe trains."""
    from omegaconf import OmegaConf

    model = OmegaConf.load(ROOT / "conf/model/halo_vae.yaml")
    experiment = OmegaConf.load(ROOT / "conf/experiment/halo_vae_small.yaml")
    merged = OmegaConf.to_container(OmegaConf.merge(model, experiment.model), resolve=False)
    for key in ("_target_", "_convert_", "halo_checkpoint", "object_points"):
        merged.pop(key, None)
    data = OmegaConf.to_container(experiment.data, resolve=False)
    return merged, data


RECIPE, RECIPE_DATA = recipe_model_settings()
#: The recipe, and the recipe without the HALO term (the ablation at equal steps).
CONFIGS = {
    "nointer": {**RECIPE, "use_inter_loss": False, "use_prior_inter_loss": False},
    "inter": RECIPE,
}


def train_one(args, config: str, seed: int) -> Path:
    from torch.utils.data import DataLoader

    from datamodules.grasp import GraspRecordsDataset
    from lightning_modules.halo_vae import HaloVaeModule

    out = Path(args.out) / "runs" / f"{config}_seed{seed}.ckpt"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    n_obj, n_in = RECIPE_DATA["n_object_points"], RECIPE_DATA["n_inside_points"]
    ds = GraspRecordsDataset(
        args.records, "train", n_object_points=n_obj, n_inside_points=n_in, augment_rotation=True, seed=seed
    )
    loader = DataLoader(ds, batch_size=RECIPE_DATA["batch_size"], shuffle=True, drop_last=True, num_workers=0)
    module = HaloVaeModule(halo_checkpoint=args.halo_checkpoint, object_points=n_obj, **CONFIGS[config])
    module.fit_skeleton_template(ds.keypoints)
    optimizer = module.configure_optimizers()
    module.train()
    step, t0, last = 0, time.perf_counter(), {}
    while step < args.steps:
        for batch in loader:
            module.schedule_step = step
            total, terms, _ = module.losses(batch, sample=True)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            last = {k: float(v.detach()) for k, v in terms.items()}
            step += 1
            if step >= args.steps:
                break
    seconds = time.perf_counter() - t0
    ckpt = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "global_step": step,
        "epoch": 0,
        "bench": {"seconds": seconds, "last_terms": last, "config": config, "seed": seed},
    }
    torch.save(ckpt, out)
    print(
        f"trained {config} seed {seed}: {step} steps in {seconds:.0f} s; last terms "
        + ", ".join(f"{k} {v:.3g}" for k, v in last.items()),
        flush=True,
    )
    return out


def cmd_train(args) -> None:
    torch.set_num_threads(1)
    for seed in args.seeds:
        for config in args.configs:
            train_one(args, config, seed)


# ----------------------------------------------------------------------------- objects

#: Real meshes shipped inside pybullet_data (scans and models nobody here designed), with the
#: longest side they are rescaled to (metres) so a hand can hold them.
REAL_OBJECTS = {
    "duck": ("duck.obj", 0.10),
    "bunny": ("bunny.obj", 0.10),
    "mug": ("objects/mug.obj", 0.12),
    "teddy": ("teddy2_VHACD_CHs.obj", 0.14),
    "soccerball": ("soccerball.obj", 0.08),
}


def real_objects(names=None):
    """(name, centred trimesh, note) for the pybullet_data meshes: longest side rescaled, centred at
    the bounding-box centre; non-watertight ones replaced by their convex hull (said in the note)."""
    import pybullet_data
    import trimesh

    root = Path(pybullet_data.getDataPath())
    result = []
    for name, (rel, size) in REAL_OBJECTS.items():
        if names is not None and name not in names:
            continue
        path = root / rel
        if not path.is_file():
            continue
        mesh = trimesh.load(path, force="mesh", process=True)
        scale = size / float(mesh.extents.max())
        mesh.apply_scale(scale)
        mesh.apply_translation(-0.5 * (mesh.bounds[0] + mesh.bounds[1]))
        note = f"{rel} x{scale:.3g}"
        if not mesh.is_watertight:
            mesh = mesh.convex_hull
            note += ", convex hull (not watertight)"
        result.append((f"real{name}", mesh, note))
    return result


def synthetic_objects(records: str):
    from halo.grasp.records import grasp_object, load_objects

    names, objects = load_objects(records)
    meta = json.loads((Path(records) / "meta.json").read_text())
    held = meta["objects"]["val"] + meta["objects"]["test"]
    return [(n, grasp_object(n, objects[n]).mesh, "synthetic held-out") for n in names if n in held]


def training_grasps(records: str, per_object: int, seed: int) -> dict[str, np.ndarray]:
    """Held-out ground-truth grasps per object in the centred template frame (the objects' frame)."""
    from halo.grasp.records import grasp_object, load_objects

    names, objects = load_objects(records)
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {}
    for split in ("val", "test"):
        kp = np.load(f"{records}/{split}/keypoints.npy")
        oi = np.load(f"{records}/{split}/object_index.npy")
        rot = np.load(f"{records}/{split}/object_rotation.npy")
        tr = np.load(f"{records}/{split}/object_translation.npy")
        for i in range(len(kp)):
            name = names[oi[i]]
            verts = objects[name]["vertices"]
            center = 0.5 * (verts.min(0) + verts.max(0))
            out.setdefault(name, []).append((kp[i] - tr[i]) @ rot[i] - center)
    del grasp_object
    return {
        n: np.stack(v)[rng.choice(len(v), size=min(per_object, len(v)), replace=False)].astype(np.float32)
        for n, v in out.items()
    }


# ----------------------------------------------------------------------------- table


def score(halo, mesh, name, keypoints, simulate: bool) -> list[dict]:
    from halo.grasp.pipeline import evaluate_grasp

    rows = []
    for i, kp in enumerate(keypoints):
        r = evaluate_grasp(halo, mesh, kp, object_name=name, index=i)
        row = r.row()
        if simulate and r.hand is not None and r.error is None:
            from halo.grasp.metrics import simulation_displacement_m

            try:
                row["sim_cm"] = 100.0 * float(simulation_displacement_m(r.hand, mesh))
            except Exception as exc:  # noqa: BLE001 - a failed simulation is reported, not fatal
                row["sim_cm"] = math.nan
                row["error"] = f"simulation: {exc}"
        rows.append(row)
    return rows


def mean_se(values) -> tuple[float, float]:
    a = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    if len(a) == 0:
        return math.nan, math.nan
    return float(a.mean()), float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else 0.0


def summarize(rows: list[dict], keypoints: np.ndarray, seconds: float) -> dict:
    from halo.grasp.diversity import grasp_diversity

    vol, vol_se = mean_se([r["volume_cm3"] for r in rows])
    depth, _ = mean_se([r["depth_cm"] for r in rows])
    sims = [r.get("sim_cm", math.nan) for r in rows]
    div = grasp_diversity(keypoints, k=20, seed=0)
    bl = bone_lengths(torch.as_tensor(keypoints, dtype=torch.float64))
    return {
        "n": len(rows),
        "volume_cm3": vol,
        "volume_se": vol_se,
        "depth_cm": depth,
        "contact_ratio": sum(bool(r["contact"]) for r in rows) / max(1, len(rows)),
        "sim_median_cm": float(np.nanmedian(sims)) if np.isfinite(sims).any() else math.nan,
        "entropy": div.entropy,
        "cluster_size_cm": div.cluster_size_cm,
        "s_per_grasp": seconds,
        "bone_std_cm": float(bl.std(0).mean() * 100),
        "failed": sum(1 for r in rows if r["error"]),
    }


def cmd_table(args) -> None:
    from halo.grasp.pipeline import sample_surface_points
    from halo.grasp.refine import RefineConfig, refine_grasps
    from halo.grasp.selection import choose_grasps
    from halo.grasp.vae_checkpoint import load_grasp_vae
    from lightning_modules.halo_vae import load_frozen_halo

    torch.set_num_threads(1)
    halo, _ = load_frozen_halo(args.halo_checkpoint)
    sets = {}
    if "synthetic" in args.sets:
        sets["synthetic"] = synthetic_objects(args.records)
    if "real" in args.sets:
        sets["real"] = real_objects(args.real)
    gt = training_grasps(args.records, args.grasps * len(args.seeds), seed=0)
    results: dict[str, dict] = {}
    per_seed: dict[str, dict] = {}
    render_pair = None
    for set_name, objs in sets.items():
        methods: dict[str, dict] = {}
        for obj_index, (name, mesh, note) in enumerate(objs):
            print(f"[{set_name}] {name}: {note}", flush=True)
            pts = torch.tensor(sample_surface_points(mesh, 300, seed=0))
            for seed in args.seeds:
                for config, latent, oversample in [
                    (c, z, k)
                    for c in args.configs
                    for z in (args.latents if c == "inter" else ["standard"])
                    for k in (args.oversample if c == "inter" else [1])
                ]:
                    vae, _ = load_grasp_vae(Path(args.out) / "runs" / f"{config}_seed{seed}.ckpt")
                    label = config if latent == "standard" else f"{config} (fitted z)"
                    if oversample > 1:
                        label += f", oversample {oversample}"
                    # Latents differ per object (as in `halo generate grasps`): with one seed for every
                    # object the pooled diversity counted the same 8 latents five times.
                    gen = torch.Generator().manual_seed(1000 * (seed + 1) + obj_index)
                    t0 = time.perf_counter()
                    drawn = vae.sample(pts, args.grasps * oversample, generator=gen, latent=latent)
                    t_sample = (time.perf_counter() - t0) / args.grasps
                    kp = drawn
                    if oversample > 1:  # as `halo generate grasps --oversample` without refinement
                        keep = choose_grasps(halo, drawn, mesh, args.grasps).keep
                        kp = drawn[torch.from_numpy(keep)]
                    dt = (time.perf_counter() - t0) / args.grasps
                    m = methods.setdefault(label, {"rows": [], "kp": [], "t": []})
                    rows = score(halo, mesh, name, kp.numpy(), args.simulate)
                    m["rows"] += rows
                    m["kp"].append(kp.numpy())
                    m["t"].append(dt)
                    per_seed.setdefault(f"{set_name}/{label}", {}).setdefault(seed, []).extend(
                        r["volume_cm3"] for r in rows
                    )
                    if config != "inter":
                        continue
                    for margin, grip_mm, support in [
                        (m_, g_, s_) for m_ in args.margins for g_ in args.grips_mm for s_ in args.supports
                    ]:
                        # test-time refinement through HALO, per margin, grip depth and support axis
                        refined = f"{label}+HALO refine" + (f" (margin {margin:g})" if margin else "")
                        refined += f" (grip {grip_mm:g} mm)" if grip_mm else ""
                        refined += f" (support {support})" if support != "none" else ""
                        cfg = RefineConfig(
                            steps=args.refine_steps,
                            penetration_margin=margin,
                            grip_depth_m=grip_mm / 1000.0,
                            support_direction=SUPPORT_AXES[support],
                        )
                        t0 = time.perf_counter()
                        out = refine_grasps(halo, drawn, mesh, config=cfg)  # every draw, as the CLI
                        final = out.keypoints
                        if oversample > 1:  # chosen on the refined hands
                            keep = choose_grasps(
                                halo, final, mesh, args.grasps, gravity=SUPPORT_AXES[support]
                            ).keep
                            final = final[torch.from_numpy(keep)]
                        dt2 = t_sample + (time.perf_counter() - t0) / args.grasps
                        m2 = methods.setdefault(refined, {"rows": [], "kp": [], "t": []})
                        rows2 = score(halo, mesh, name, final.numpy(), args.simulate)
                        m2["rows"] += rows2
                        m2["kp"].append(final.numpy())
                        m2["t"].append(dt2)
                        per_seed.setdefault(f"{set_name}/{refined}", {}).setdefault(seed, []).extend(
                            r["volume_cm3"] for r in rows2
                        )
                        if (
                            render_pair is None
                            and set_name == "synthetic"
                            and not margin
                            and support == "none"
                            and latent == "standard"
                            and oversample == 1
                        ):
                            worst = int(np.nanargmax([r["volume_cm3"] for r in rows]))
                            render_pair = (mesh, kp[worst].numpy(), out.keypoints[worst].numpy(), name)
            if set_name == "synthetic" and name in gt:
                m = methods.setdefault("training grasps", {"rows": [], "kp": [], "t": []})
                m["rows"] += score(halo, mesh, name, gt[name], args.simulate)
                m["kp"].append(gt[name])
                m["t"].append(math.nan)
                for grip_mm in args.grips_mm if args.refine_training else []:
                    # Does refinement itself make grasps drop?  The training grasps hold from opposing sides.
                    t0 = time.perf_counter()
                    cfg = RefineConfig(steps=args.refine_steps, grip_depth_m=grip_mm / 1000.0)
                    out = refine_grasps(halo, torch.from_numpy(gt[name]), mesh, config=cfg)
                    label = "training grasps+HALO refine" + (f" (grip {grip_mm:g} mm)" if grip_mm else "")
                    m = methods.setdefault(label, {"rows": [], "kp": [], "t": []})
                    m["rows"] += score(halo, mesh, name, out.keypoints.numpy(), args.simulate)
                    m["kp"].append(out.keypoints.numpy())
                    m["t"].append((time.perf_counter() - t0) / len(gt[name]))
        results[set_name] = {
            label: summarize(
                m["rows"], np.concatenate(m["kp"]), float(np.nanmean(m["t"])) if m["t"] else math.nan
            )
            for label, m in methods.items()
        }
        results[set_name]["objects"] = [f"{n}: {note}" for n, _, note in objs]
        print_table({set_name: results[set_name]}, {}, flush=True)
    ablation = {
        key: {
            "per_seed": {s: float(np.nanmean(v)) for s, v in seeds.items()},
            "mean": mean_se([np.nanmean(v) for v in seeds.values()])[0],
            "se": mean_se([np.nanmean(v) for v in seeds.values()])[1],
        }
        for key, seeds in per_seed.items()
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    name = "table.json" if len(args.sets) == 2 else f"table-{args.sets[0]}.json"  # parallel runs per set
    (Path(args.out) / name).write_text(json.dumps({"results": results, "ablation": ablation}, indent=1))
    print_table(results, ablation)
    if render_pair is not None:
        save_render(halo, *render_pair, Path(args.render))


def cmd_pushed(args) -> None:
    """`halo refine grasps` target: held-out ground-truth grasps pushed palm-first into their object
    until they overlap it by 4-12 cm³ (the smallest of 0.6 / 1.0 / 1.4 / 1.8 cm that does), refined
    through HALO; volume before / after per object, contact kept, mean joint displacement."""
    from halo.grasp.pipeline import evaluate_grasp
    from halo.grasp.refine import RefineConfig, refine_grasps
    from lightning_modules.halo_vae import load_frozen_halo

    torch.set_num_threads(1)
    halo, _ = load_frozen_halo(args.halo_checkpoint)
    gt = training_grasps(args.records, args.grasps, seed=1)
    print(
        "| object | grasps | volume before cm³ | after cm³ | reduction | contact after | displacement cm | s/grasp |"
    )
    print("|---" * 8 + "|")
    for name, mesh, _note in synthetic_objects(args.records):
        pushed = []
        for kp in gt[name]:
            palm = kp[[0, 1, 5, 9, 13, 17]].mean(0)
            inward = -palm / np.linalg.norm(palm)
            for shift in (0.006, 0.010, 0.014, 0.018):
                cand = kp + inward * shift
                m = evaluate_grasp(halo, mesh, cand).metrics
                if m is not None and 4.0 <= m.volume_cm3 <= 12.0:
                    pushed.append((cand, m.volume_cm3))
                    break
        if not pushed:
            print(f"| {name} | 0 | (no push gave 4-12 cm³) | | | | | |")
            continue
        kp = torch.tensor(np.stack([p for p, _ in pushed]), dtype=torch.float32)
        before = np.array([v for _, v in pushed])
        t0 = time.perf_counter()
        out = refine_grasps(halo, kp, mesh, config=RefineConfig(steps=args.refine_steps))
        dt = (time.perf_counter() - t0) / len(kp)
        after = [evaluate_grasp(halo, mesh, k).metrics for k in out.keypoints.numpy()]
        vol = np.array([m.volume_cm3 if m else np.nan for m in after])
        contact = np.mean([bool(m and m.contact) for m in after])
        print(
            f"| {name} | {len(kp)} | {before.mean():.2f} | {np.nanmean(vol):.2f} | "
            f"{100 * (1 - np.nanmean(vol) / before.mean()):.0f} % (min per grasp {100 * np.nanmin(1 - vol / before):.0f} %) "
            f"| {contact:.2f} | {100 * out.displacement_m.mean():.2f} | {dt:.2f} |",
            flush=True,
        )


def print_table(results: dict, ablation: dict, flush: bool = False) -> None:
    cols = (
        "volume_cm3",
        "depth_cm",
        "contact_ratio",
        "sim_median_cm",
        "entropy",
        "cluster_size_cm",
        "s_per_grasp",
        "bone_std_cm",
        "failed",
    )
    for set_name, methods in results.items():
        print(f"\n### {set_name} objects: " + "; ".join(methods.get("objects", [])))
        print(
            "| method | n | volume cm³ (± s.e.) | depth cm | contact | sim. displ. median cm | entropy "
            "| cluster size cm | s/grasp | bone-length std cm | failed |"
        )
        print("|---" * 11 + "|")
        for label, s in methods.items():
            if label == "objects":
                continue
            vals = [f"{s[c]:.3g}" if isinstance(s[c], float) else str(s[c]) for c in cols]
            vals[0] = f"{s['volume_cm3']:.2f} ± {s['volume_se']:.2f}"
            print(f"| {label} | {s['n']} | " + " | ".join(vals) + " |")
    if not ablation:
        if flush:
            sys.stdout.flush()
        return
    print("\n### ablation: mean volume per seed (cm³), mean ± s.e. over seeds")
    for key, a in ablation.items():
        seeds = ", ".join(f"{v:.2f}" for v in a["per_seed"].values())
        print(f"{key:36s} {a['mean']:.2f} ± {a['se']:.2f}   seeds: {seeds}")


def save_render(halo, mesh, before, after, name, path: Path) -> None:
    from PIL import Image

    from halo.grasp.report import render_grasp
    from halo.meshing.hand_mesh import extract_hand_mesh

    tiles = []
    for kp in (before, after):
        hand = extract_hand_mesh(halo, kp, resolution_0=32, upsampling_steps=2).mesh  # the CLI default
        tiles.append(np.asarray(render_grasp(hand, mesh, kp, size=360)))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(tiles, axis=1)).save(path)
    print(f"render ({name}, before | after refinement through HALO): {path}")


def cmd_choice(args) -> None:
    """Which refined hands to keep: every one of K x --grasps fitted-z draws per object and seed
    is refined (grip --grips-mm[0], support --supports[0]) and simulated, then the first n, the n
    most balanced and the n best by balance + hold residual (:func:`halo.grasp.selection.choose_grasps`
    with gravity -z, the simulation's) are compared for every K of --oversample on the same draws."""
    from halo.grasp.pipeline import sample_surface_points
    from halo.grasp.refine import RefineConfig, refine_grasps
    from halo.grasp.selection import (
        contact_balance,
        hold_frame,
        hold_residuals,
        keep_indices,
        surface_with_normals,
        touch_logits,
    )
    from halo.grasp.vae_checkpoint import load_grasp_vae
    from lightning_modules.halo_vae import load_frozen_halo

    torch.set_num_threads(1)
    halo, _ = load_frozen_halo(args.halo_checkpoint)
    k_max, n = max(args.oversample), args.grasps
    grip_mm, support = args.grips_mm[0], args.supports[0]
    gravity = np.array([0.0, 0.0, -1.0])  # the simulation's
    cache = Path(args.out) / "choice"
    cache.mkdir(parents=True, exist_ok=True)
    table: dict[str, dict] = {}
    for set_name in args.sets:
        objs = synthetic_objects(args.records) if set_name == "synthetic" else real_objects(args.real)
        rows: dict[str, dict[str, list]] = {}
        for seed in args.seeds:
            path = cache / f"{set_name}_seed{seed}_{support}_grip{grip_mm:g}_{k_max * n}.npy"
            if path.is_file():
                draws = np.load(path, allow_pickle=True).item()
            else:
                vae, _ = load_grasp_vae(Path(args.out) / "runs" / f"inter_seed{seed}.ckpt")
                draws = {}
                for obj_index, (name, mesh, _note) in enumerate(objs):
                    pts = torch.tensor(sample_surface_points(mesh, 300, seed=0))
                    gen = torch.Generator().manual_seed(1000 * (seed + 1) + obj_index)
                    drawn = vae.sample(pts, k_max * n, generator=gen, latent="fitted")
                    cfg = RefineConfig(
                        steps=args.refine_steps,
                        grip_depth_m=grip_mm / 1000.0,
                        support_direction=SUPPORT_AXES[support],
                    )
                    out = refine_grasps(halo, drawn, mesh, config=cfg)
                    scored = score(halo, mesh, name, out.keypoints.numpy(), True)
                    surf, nrm = surface_with_normals(mesh, 3000, 0)
                    logits = touch_logits(halo, out.keypoints, torch.from_numpy(surf))
                    draws[name] = {
                        "kp": out.keypoints.numpy(),
                        "vol": np.array([r["volume_cm3"] for r in scored]),
                        "contact": np.array([float(bool(r["contact"])) for r in scored]),
                        "sim": np.array([r.get("sim_cm", math.nan) for r in scored]),
                        "bal": contact_balance(halo, out.keypoints, surf, nrm, logits=logits).numpy(),
                        "logit": logits.numpy().astype(np.float16),
                        "surf": surf,
                        "nrm": nrm,
                        "t_ref": out.seconds,
                    }
                    print(
                        f"[{set_name}] seed {seed} {name}: {k_max * n} refined in {out.seconds:.0f} s",
                        flush=True,
                    )
                np.save(path, draws, allow_pickle=True)
            meshes = {name: mesh for name, mesh, _note in objs}
            for name, o in draws.items():
                centre, torque_length = hold_frame(meshes[name])
                residual = hold_residuals(
                    torch.from_numpy(o["logit"].astype(np.float32)), o["surf"], o["nrm"], centre, gravity,
                    torque_length_m=torque_length,
                )  # fmt: skip
                for k in args.oversample:
                    m = k * n
                    if k == 1:
                        rules = {"first n": np.arange(n)}
                    else:  # as halo generate grasps --oversample k, without / with gravity
                        rules = {
                            "balance": keep_indices(o["bal"][:m], None, n),
                            "balance + hold": keep_indices(o["bal"][:m], residual[:m], n),
                        }
                    for rule, keep in rules.items():
                        r = rows.setdefault(f"K={k}, {rule}", {"sim": [], "vol": [], "contact": [], "kp": []})
                        r["sim"] += list(o["sim"][keep])
                        r["vol"] += list(o["vol"][keep])
                        r["contact"] += list(o["contact"][keep])
                        r["kp"].append(o["kp"][keep])
                        r.setdefault("seed_sim", {}).setdefault(seed, []).extend(o["sim"][keep])
                        # refinement time per kept grasp: k refined per kept one
                        r.setdefault("t", []).append(o["t_ref"] / len(o["sim"]) * k)
        from halo.grasp.diversity import grasp_diversity

        table[set_name] = {}
        print(f"\n### {set_name}: grip {grip_mm:g} mm, support {support}, {n} kept per object and seed")
        print(
            "| rule | sim. median cm (per seed) | held < 2 cm | volume cm³ | contact | entropy | cluster cm | s / kept grasp |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for label, r in rows.items():
            div = grasp_diversity(np.concatenate(r["kp"]), k=20, seed=0)
            per_seed = " / ".join(f"{np.nanmedian(v):.2f}" for v in r["seed_sim"].values())
            entry = {
                "sim_median_cm": float(np.nanmedian(r["sim"])),
                "sim_median_per_seed": [float(np.nanmedian(v)) for v in r["seed_sim"].values()],
                "held": float(np.mean(np.asarray(r["sim"]) < 2.0)),
                "volume_cm3": float(np.nanmean(r["vol"])),
                "contact_ratio": float(np.nanmean(r["contact"])),
                "entropy": div.entropy,
                "cluster_size_cm": div.cluster_size_cm,
                "s_per_kept_grasp": float(np.mean(r["t"])),
            }
            table[set_name][label] = entry
            print(
                f"| {label} | {entry['sim_median_cm']:.2f} ({per_seed}) | {entry['held']:.0%} | "
                f"{entry['volume_cm3']:.2f} | {entry['contact_ratio']:.2f} | {div.entropy:.2f} | "
                f"{div.cluster_size_cm:.2f} | {entry['s_per_kept_grasp']:.2f} |",
                flush=True,
            )
    name = "choice.json" if len(args.sets) == 2 else f"choice-{args.sets[0]}.json"
    (Path(args.out) / name).write_text(json.dumps(table, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["train", "table", "pushed", "choice"])
    p.add_argument("--halo-checkpoint", required=True)
    p.add_argument("--records", required=True, help="synthetic grasp records folder (data=synthetic_grasps)")
    p.add_argument("--out", default="outputs/bench_grasps")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=1500, help="training steps per run (the recipe: 1500)")
    p.add_argument("--grasps", type=int, default=10, help="grasps per object per seed")
    p.add_argument(
        "--sets",
        nargs="+",
        default=["synthetic", "real"],
        choices=["synthetic", "real"],
        help="object sets of the table (one per process runs them in parallel)",
    )
    p.add_argument(
        "--margins",
        type=float,
        nargs="+",
        default=[0.0],
        help="penetration margins of the test-time refinement (one row each; README: 0 3 8)",
    )
    p.add_argument(
        "--grips-mm",
        type=float,
        nargs="+",
        default=[0.0],
        help="grip depths (mm) of the test-time refinement (one row each; RefineConfig.grip_depth_m)",
    )
    p.add_argument(
        "--supports",
        nargs="+",
        default=["none"],
        choices=list(SUPPORT_AXES),
        help="refinement's support term against gravity along this axis (z-: halo refine grasps "
        "--support-axis=-z; 'none': off; one row each, e.g. --supports none z-)",
    )
    p.add_argument(
        "--oversample",
        type=int,
        nargs="+",
        default=[1],
        help="draw K x --grasps, refine them all and keep the most balanced (halo generate grasps --oversample; one row set each)",
    )
    p.add_argument(
        "--refine-training",
        action="store_true",
        help="also refine the held-out training grasps (synthetic set; one row per --grips-mm)",
    )
    p.add_argument(
        "--configs",
        nargs="+",
        default=list(CONFIGS),
        choices=list(CONFIGS),
        help="runs to train / sample from (default both: without / with the HALO terms)",
    )
    p.add_argument(
        "--refine-steps", type=int, default=80, help="test-time refinement steps (the CLI default)"
    )
    p.add_argument("--simulate", action="store_true", help="pybullet simulation displacement")
    p.add_argument(
        "--latents",
        nargs="+",
        default=["standard"],
        choices=["standard", "fitted"],
        help="where the HALO-term runs draw z (fitted: halo generate grasps --latent fitted; needs runs "
        "trained with the latent statistics)",
    )
    p.add_argument("--render", default="docs/images/refine_before_after.png")
    p.add_argument("--real", nargs="+", default=list(REAL_OBJECTS), choices=list(REAL_OBJECTS))
    args = p.parse_args()
    {"train": cmd_train, "table": cmd_table, "pushed": cmd_pushed, "choice": cmd_choice}[args.stage](args)


if __name__ == "__main__":
    main()
