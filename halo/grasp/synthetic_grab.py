"""The synthetic GRAB dataset: synthesized grasps written in the real GRAB layout.

:func:`write_synthetic_grab` writes sequences of grasps from
:class:`halo.grasp.synthesis.GraspSynthesizer` (object moved to a random world pose
per frame, plus frames with the hand away from the object) as
``ROOT/grab/s<k>/<object>_<intent>_<n>.npz`` with the subject hand templates, object
meshes and the synthetic hand model under ``ROOT/tools``, exactly the layout of the
real GRAB data (see the contract in the project docs); :func:`synthetic_grab_root`
caches such a root by configuration (:mod:`halo.utils.cache`).

Written GRAB parameters use GRAB's conventions: object world vertices =
``v_template @ R(global_orient) + transl`` (row vectors), hand = MANO with
``flat_hand_mean=True``, the subject template as ``v_template``,
``global_orient`` about the rest wrist joint, then ``transl``.

Size: one cohesive module over 500 lines: the writer's configuration, its worker
processes, the GRAB arrays of a sequence and the cache of finished roots are one
pipeline that shares the layout constants.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import trimesh
from scipy.spatial.transform import Rotation

from halo.geometry.inside import o3d_points, raycasting_scene
from halo.geometry.mesh_io import save_mesh
from halo.grasp.synthesis import (
    Grasp,
    GraspSynthConfig,
    GraspSynthesizer,
    SynthStats,
    grab_part_ids,
    shaped_rest_vertices,
    subject_model,
)
from halo.hands.mano import ManoModel
from halo.utils.atomic import atomic_write_bytes, atomic_write_json
from halo.utils.cache import build_once, cache_key
from halo.utils.progress import progress_bar

__all__ = [
    "COMPLETE_MARKER",
    "CONTACT_DISTANCE_M",
    "GRAB_DIR",
    "HAND_MODEL_PATH",
    "MANIFEST",
    "OBJECT_MESH_DIR",
    "SUBJECT_MESH_DIR",
    "SyntheticGrabConfig",
    "SyntheticGrabReport",
    "contact_labels",
    "synthetic_grab_key",
    "synthetic_grab_root",
    "write_synthetic_grab",
]

GRAB_DIR = "grab"
SUBJECT_MESH_DIR = "tools/subject_meshes"
OBJECT_MESH_DIR = "tools/object_meshes/contact_meshes"
HAND_MODEL_PATH = "tools/mano/SYNTHETIC_RIGHT.npz"
MANIFEST = "synthetic_grab.json"
COMPLETE_MARKER = ".synthetic_grab_complete"
_FORMAT = 1
_INTENTS = ("lift", "pass", "inspect")
#: Contact labels: object vertices within this distance of the hand get the nearest hand part's id.
CONTACT_DISTANCE_M = 0.002


@dataclass(frozen=True)
class SyntheticGrabConfig:
    """What :func:`write_synthetic_grab` generates.

    Attributes:
        objects: number of objects (:func:`halo.grasp.objects.select_objects`;
            None = all named objects: 18 train, 2 val, 3 test).
        grasps_per_object: accepted grasps per object, over all subjects.
        subjects: subjects ``s1..sN`` (each with its own hand shape).
        grasp_frames: grasp frames per sequence file (the last one may have fewer).
        away_frames: frames per sequence with the open hand away from the object
            (first and last frames); their contact is all zero.
        seed: everything is deterministic given the configuration.
        n_comps: PCA size of ``rhand.params.hand_pose`` (GRAB: 24).
        synth: the grasp synthesizer's parameters.
    """

    objects: int | None = None
    grasps_per_object: int = 32
    subjects: int = 4
    grasp_frames: int = 8
    away_frames: int = 2
    seed: int = 0
    n_comps: int = 24
    synth: GraspSynthConfig = field(default_factory=GraspSynthConfig)

    def __post_init__(self) -> None:
        for name in ("grasps_per_object", "subjects", "grasp_frames", "n_comps"):
            if getattr(self, name) < 1:
                raise ValueError(f"SyntheticGrabConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.away_frames < 0:
            raise ValueError(f"SyntheticGrabConfig.away_frames must be >= 0, got {self.away_frames}")
        if self.objects is not None and self.objects < 1:
            raise ValueError(f"SyntheticGrabConfig.objects must be >= 1 or None, got {self.objects}")
        if not 1 <= self.n_comps <= 45:
            raise ValueError(f"SyntheticGrabConfig.n_comps must be in 1..45, got {self.n_comps}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SyntheticGrabConfig:
        d = dict(d)
        d["synth"] = GraspSynthConfig(**d.get("synth", {}))
        return cls(**d)


@dataclass
class SyntheticGrabReport:
    """What :func:`write_synthetic_grab` did."""

    root: Path
    written: list[str] = field(default_factory=list)
    skipped_existing: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    grasps: int = 0
    frames: int = 0
    shortfall: int = 0
    stats: SynthStats = field(default_factory=SynthStats)
    seconds: float = 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.stats.acceptance_rate

    def summary(self) -> str:
        s = (
            f"{self.root}: {len(self.written)} sequence(s) written ({self.grasps} grasps, {self.frames} frames), "
            f"{len(self.skipped_existing)} already there, {len(self.failed)} failed, {self.seconds:.1f} s"
        )
        if self.stats.candidates:
            s += f"; acceptance {self.acceptance_rate:.0%} of {self.stats.candidates} candidates"
        if self.shortfall:
            s += f"; {self.shortfall} grasp(s) short of the request"
        return s


@dataclass(frozen=True)
class _Job:
    """One sequence file."""

    subject: int  # 0-based
    object_name: str
    intent: str
    k: int  # 1-based index per (subject, object, intent)
    n_grasps: int
    seed: tuple[int, ...]

    @property
    def relpath(self) -> str:
        return f"{GRAB_DIR}/s{self.subject + 1}/{self.object_name}_{self.intent}_{self.k}.npz"


def _gender(subject: int) -> str:
    return "male" if subject % 2 == 0 else "female"


def _subject_betas(seed: int, subject: int, num_betas: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 0x5B1, subject])
    betas = np.clip(rng.normal(0.0, 0.8, num_betas), -2.0, 2.0)
    betas[0] = np.clip(betas[0] + (0.6 if _gender(subject) == "male" else -0.6), -2.5, 2.5)  # overall size
    return betas


def _name_code(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


def _jobs(config: SyntheticGrabConfig, object_names: Sequence[str]) -> list[_Job]:
    jobs: list[_Job] = []
    counts: dict[tuple[int, str, str], int] = {}
    for i, name in enumerate(object_names):
        remaining = config.grasps_per_object
        j = 0
        while remaining > 0:
            n = min(config.grasp_frames, remaining)
            subject = (i + j) % config.subjects
            intent = _INTENTS[j % len(_INTENTS)]
            key = (subject, name, intent)
            counts[key] = counts.get(key, 0) + 1
            jobs.append(_Job(subject, name, intent, counts[key], n, (config.seed, _name_code(name), j)))
            remaining -= n
            j += 1
    return jobs


def _write_ply(path: Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    # process=False keeps the vertex order (contact labels and MANO correspondences index it).
    save_mesh(trimesh.Trimesh(vertices, faces, process=False), path)


def _read_ply(path: Path) -> trimesh.Trimesh:
    return trimesh.load(path, file_type="ply", process=False, force="mesh")


def _object_pose_param(rotation: np.ndarray) -> np.ndarray:
    """GRAB object ``global_orient`` for a column-vector rotation Q (world = Q v + t).

    GRAB applies ``v @ R(global_orient)``, i.e. ``R^T v``, so ``R = Q^T``.
    """
    return Rotation.from_matrix(np.swapaxes(rotation, -1, -2)).as_rotvec()


def contact_labels(
    hand_vertices: np.ndarray, hand_faces: np.ndarray, part_ids: np.ndarray, object_vertices: np.ndarray,
    distance_m: float = CONTACT_DISTANCE_M,
) -> np.ndarray:  # fmt: skip
    """(N,) GRAB contact id per object vertex: the id of the nearest hand vertex's part, 0 when farther than ``distance_m``.

    Object vertices inside the (watertight) hand count as touching.
    """
    from scipy.spatial import cKDTree

    labels = np.zeros(len(object_vertices), dtype=np.int32)
    # Only object vertices in the hand's (padded) bounding box can be near it.
    lo, hi = hand_vertices.min(axis=0) - distance_m, hand_vertices.max(axis=0) + distance_m
    near = np.all((object_vertices >= lo) & (object_vertices <= hi), axis=1)
    if near.any():
        scene = raycasting_scene(hand_vertices, hand_faces)
        d = scene.compute_signed_distance(o3d_points(object_vertices[near]), nthreads=1).numpy()
        near[near] = d <= distance_m
    if near.any():
        _, nearest = cKDTree(hand_vertices).query(object_vertices[near])
        labels[near] = part_ids[nearest]
    return labels


_WORKER: dict[str, Any] = {}


def _init_worker(root: str, config: SyntheticGrabConfig) -> None:
    from halo.hands.synthetic_hand import load_synthetic_hand_model

    root_p = Path(root)
    base = load_synthetic_hand_model(root_p / HAND_MODEL_PATH)
    _WORKER.clear()
    _WORKER.update(root=root_p, config=config, base=base, objects={}, subjects={})


def _init_pool_worker(*args) -> None:
    torch.set_num_threads(1)
    _init_worker(*args)


def _worker_subject(subject: int) -> tuple[ManoModel, str]:
    cache = _WORKER["subjects"]
    if subject not in cache:
        gender = _gender(subject)
        path = _WORKER["root"] / SUBJECT_MESH_DIR / gender / f"s{subject + 1}_rhand.ply"
        cache[subject] = (subject_model(_WORKER["base"], _read_ply(path).vertices), gender)
    return cache[subject]


def _worker_object(name: str) -> trimesh.Trimesh:
    cache = _WORKER["objects"]
    if name not in cache:
        cache[name] = _read_ply(_WORKER["root"] / OBJECT_MESH_DIR / f"{name}.ply")
    return cache[name]


def _run_job(job: _Job) -> tuple[str, dict | None, str | None]:
    import traceback

    try:
        return job.relpath, _write_sequence(job), None
    except Exception as exc:  # one bad sequence is reported and skipped, never written
        return job.relpath, None, "".join(traceback.format_exception_only(type(exc), exc)).strip()


def _write_sequence(job: _Job) -> dict:
    """Synthesize and write one sequence; returns its statistics."""
    config: SyntheticGrabConfig = _WORKER["config"]
    root: Path = _WORKER["root"]
    model, gender = _worker_subject(job.subject)
    obj = _worker_object(job.object_name)
    rng = np.random.default_rng(list(job.seed))
    synth = GraspSynthesizer(model, obj, config.synth)
    grasps, stats = synth.sample(job.n_grasps, rng)
    if not grasps:
        raise RuntimeError(f"no grasp accepted in {stats.candidates} candidates ({stats.rejected})")
    frames = _sequence_frames(synth, grasps, config.away_frames, rng)
    arrays = _grab_arrays(job, gender, model, synth, obj, frames, config.n_comps)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(root / job.relpath, buf.getvalue())
    return {
        "grasps": len(grasps),
        "frames": len(frames["pose"]),
        "shortfall": job.n_grasps - len(grasps),
        "stats": dataclasses.asdict(stats),
    }


def _sequence_frames(
    synth: GraspSynthesizer, grasps: list[Grasp], away: int, rng: np.random.Generator
) -> dict:
    """Frames in the object frame: ``away // 2`` open hands, the grasps, the remaining open hands.

    An away frame backs a grasp's hand off along its approach (15-25 cm) and opens it.
    """
    n_before = away // 2
    order: list[tuple[str, int]] = [("away", int(rng.integers(len(grasps)))) for _ in range(n_before)]
    order += [("grasp", i) for i in range(len(grasps))]
    order += [("away", int(rng.integers(len(grasps)))) for _ in range(away - n_before)]
    pose, rot, trans, contact_ok = [], [], [], []
    for kind, i in order:
        g = grasps[i]
        if kind == "grasp":
            pose.append(g.pose)
            rot.append(g.rotation)
            trans.append(g.translation)
            contact_ok.append(True)
        else:
            pre = {
                "mcp_ratio": np.ones(1), "dip_ratio": np.ones(1), "spread": rng.uniform(0.0, 0.8, 1),
                "thumb_flex0": np.zeros(1), "thumb_abd": rng.uniform(20.0, 45.0, 1),
                "thumb_twist": np.full(1, -20.0), "open_curl": rng.uniform(0.1, 0.3, 1),
            }  # fmt: skip
            pose.append(synth.open_pose(pre)[0])
            rot.append(g.rotation)
            trans.append(g.translation - rng.uniform(0.15, 0.25) * g.approach)
            contact_ok.append(False)
    return {
        "pose": np.array(pose),
        "rot": np.array(rot),
        "trans": np.array(trans),
        "in_contact": np.array(contact_ok),
    }


def _grab_arrays(
    job: _Job,
    gender: str,
    model: ManoModel,
    synth: GraspSynthesizer,
    obj: trimesh.Trimesh,
    frames: dict,
    n_comps: int,
) -> dict[str, np.ndarray]:
    """The npz keys of one sequence (each a 0-d object array, as in GRAB)."""
    n = len(frames["pose"])
    rng = np.random.default_rng(list(job.seed) + [1])
    # Object world pose per frame (column form world = Q v + t); GRAB stores R = Q^T.
    q = Rotation.random(n, random_state=rng).as_matrix()
    t_obj = rng.uniform([-0.3, -0.3, 0.7], [0.3, 0.3, 1.0], size=(n, 3))
    # Hand: world = Q (R_h v_local + t_h) + t_obj; MANO rotates about the rest wrist joint J0,
    # so transl = Q t_h + t_obj + (Q R_h) J0 - J0.
    rot_w = q @ frames["rot"]
    j0 = synth.rest_joints[0]
    transl = np.einsum("nij,nj->ni", q, frames["trans"]) + t_obj + rot_w @ j0 - j0
    fullpose = frames["pose"]
    hand_pose = fullpose @ np.asarray(model.hands_components)[:n_comps].T  # flat_hand_mean: no mean

    # Contact labels in the object frame (the object template's vertex order).
    part_ids = grab_part_ids(model.weights)
    local = synth._local_vertices(fullpose)
    hand_obj = np.einsum("nij,nvj->nvi", frames["rot"], local) + frames["trans"][:, None]
    contact = np.zeros((n, len(obj.vertices)), dtype=np.int32)
    for i in np.flatnonzero(frames["in_contact"]):
        contact[i] = contact_labels(hand_obj[i], synth.faces, part_ids, np.asarray(obj.vertices))
    obj_rel = f"{OBJECT_MESH_DIR}/{job.object_name}.ply"
    sbj = f"s{job.subject + 1}"
    values: dict[str, Any] = {
        "gender": gender,
        "sbj_id": sbj,
        "obj_name": job.object_name,
        "motion_intent": job.intent,
        "framerate": 120.0,
        "n_frames": int(n),
        "n_comps": int(n_comps),
        "rhand": {
            "params": {
                "global_orient": Rotation.from_matrix(rot_w).as_rotvec().astype(np.float32),
                "hand_pose": hand_pose.astype(np.float32),
                "transl": transl.astype(np.float32),
                "fullpose": fullpose.astype(np.float32),
            },
            "vtemp": f"{SUBJECT_MESH_DIR}/{gender}/{sbj}_rhand.ply",
        },
        "object": {
            "params": {
                "transl": t_obj.astype(np.float32),
                "global_orient": _object_pose_param(q).astype(np.float32),
            },
            "object_mesh": obj_rel,
        },
        "contact": {"object": contact},
    }
    return {k: _object_array(v) for k, v in values.items()}


def _object_array(value: Any) -> np.ndarray:
    out = np.empty((), dtype=object)
    out[()] = value
    return out


def _write_tools(root: Path, config: SyntheticGrabConfig, specs) -> dict:
    """Hand model, subject templates and object meshes (skipped when present); returns manifest parts."""
    from halo.hands.synthetic_hand import get_synthetic_hand_model, save_synthetic_hand_model

    model_path = root / HAND_MODEL_PATH
    if model_path.is_file():
        from halo.hands.synthetic_hand import load_synthetic_hand_model

        base = load_synthetic_hand_model(model_path)
    else:
        base = get_synthetic_hand_model()
        save_synthetic_hand_model(base, model_path)  # atomic (halo.hands.mano_file)
    subjects = []
    for s in range(config.subjects):
        gender = _gender(s)
        betas = _subject_betas(config.seed, s, base.num_betas)
        path = root / SUBJECT_MESH_DIR / gender / f"s{s + 1}_rhand.ply"
        if not path.is_file():
            _write_ply(path, shaped_rest_vertices(base, betas), base.f)
        subjects.append(
            {"sbj_id": f"s{s + 1}", "gender": gender, "betas": [round(float(b), 6) for b in betas]}
        )
    from halo.grasp.grab import object_split
    from halo.grasp.objects import check_object_name

    split_of = {n: split for split, names in object_split(s.name for s in specs).items() for n in names}
    objects = []
    for spec in specs:
        check_object_name(spec.name)
        path = root / OBJECT_MESH_DIR / f"{spec.name}.ply"
        if not path.is_file():
            mesh = spec.build()
            _write_ply(path, mesh.vertices, mesh.faces)
        objects.append(
            {"name": spec.name, "kind": spec.kind, "params": spec.params, "split": split_of[spec.name]}
        )
    return {"subjects": subjects, "objects": objects}


def write_synthetic_grab(
    root: str | Path,
    config: SyntheticGrabConfig | None = None,
    *,
    workers: int = 1,
    progress: bool = True,
    resume: bool = True,
) -> SyntheticGrabReport:
    """Write synthetic grasp sequences in the GRAB layout under ``root``.

    Layout (paths inside the npz files are relative to ``root``)::

        root/grab/s1..sS/<object>_<intent>_<k>.npz
        root/tools/subject_meshes/<gender>/s<i>_rhand.ply     (subject rest hand, float32 PLY)
        root/tools/object_meshes/contact_meshes/<object>.ply  (object template, centred at its bbox centre)
        root/tools/mano/SYNTHETIC_RIGHT.npz                   (the hand model, MANO arrays)
        root/synthetic_grab.json                              (configuration, subjects, objects, statistics)

    Every file is written atomically (temp name + rename); with ``resume``
    existing sequence files are kept, so an interrupted run continues where it
    stopped.  Deterministic given ``config``, independent of ``workers``.
    """
    from halo.grasp.objects import select_objects

    config = config or SyntheticGrabConfig()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    specs = select_objects(config.objects, seed=config.seed)
    manifest = {
        "format": _FORMAT,
        "source": "synthetic",
        "config": config.to_dict(),
        **_write_tools(root, config, specs),
    }
    jobs = _jobs(config, [s.name for s in specs])
    report = SyntheticGrabReport(root=root)
    todo = []
    for job in jobs:
        (report.skipped_existing if resume and (root / job.relpath).is_file() else todo).append(job)
    report.skipped_existing = [j.relpath for j in report.skipped_existing]
    args = (str(root), config)
    bar = progress_bar(total=len(todo), desc="synthetic grasps", unit="seq", enabled=progress)
    pool = None
    try:
        if workers <= 1 or len(todo) <= 1:
            _init_worker(*args)
            results = map(_run_job, todo)
        else:
            import multiprocessing as mp

            ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            pool = ctx.Pool(min(workers, len(todo)), initializer=_init_pool_worker, initargs=args)
            results = pool.imap_unordered(_run_job, todo)
        for relpath, info, error in results:
            if error is not None:
                report.failed[relpath] = error
                print(f"[halo data] skipped {relpath}: {error}", file=sys.stderr)
            else:
                report.written.append(relpath)
                report.grasps += info["grasps"]
                report.frames += info["frames"]
                report.shortfall += info["shortfall"]
                st = SynthStats(**info["stats"])
                report.stats.merge(st)
            bar.update(1)
        if pool is not None:
            pool.close()
            pool.join()
    finally:
        if pool is not None:
            pool.terminate()
        bar.close()
    report.seconds = time.perf_counter() - t0
    manifest["sequences"] = sorted(j.relpath for j in jobs if (root / j.relpath).is_file())
    manifest["complete"] = not report.failed
    manifest["last_run"] = {
        "written": len(report.written), "grasps": report.grasps, "frames": report.frames,
        "candidates": report.stats.candidates, "passed": report.stats.passed,
        "rejected": report.stats.rejected, "shortfall": report.shortfall, "seconds": round(report.seconds, 2),
    }  # fmt: skip
    atomic_write_json(root / MANIFEST, manifest)
    return report


def synthetic_grab_key(config: SyntheticGrabConfig) -> str:
    """Cache key: a short hash of everything that determines the generated data."""
    return cache_key({"config": config.to_dict(), "format": _FORMAT})


def synthetic_grab_root(
    cache_dir: str | Path,
    config: SyntheticGrabConfig | None = None,
    *,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """A GRAB-layout root with synthetic grasps for ``config``, generated on first use.

    The data live in ``cache_dir/<key>`` (:func:`synthetic_grab_key`).  A
    completion marker is written last, so a half-written folder (interrupted run)
    is never returned: the next call resumes it.  Concurrent callers (e.g. DDP
    ranks, parallel test workers) serialise on the lock ``cache_dir/<key>.lock``
    (:func:`halo.utils.cache.build_once`); the second one finds the marker and returns at once.
    """
    config = config or SyntheticGrabConfig()
    key = synthetic_grab_key(config)
    root = Path(cache_dir) / key
    marker = root / COMPLETE_MARKER

    def build() -> None:
        report = write_synthetic_grab(root, config, workers=workers, progress=progress)
        if report.failed:
            first = next(iter(report.failed.items()))
            raise RuntimeError(
                f"synthetic GRAB data in {root}: {len(report.failed)} sequence(s) failed, first {first}"
            )
        atomic_write_json(marker, {"key": key, "seconds": round(report.seconds, 2)}, indent=None)

    build_once(root, marker.is_file, build)
    return root
