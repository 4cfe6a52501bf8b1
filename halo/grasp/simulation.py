"""The simulation displacement of a grasp: GraspTTA's pybullet protocol (optional dependency).

``pip install pybullet`` (or this project's extra ``.[sim]``); without it the functions
raise :class:`OptionalDependencyError` with that command.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import trimesh

__all__ = ["OptionalDependencyError", "require_pybullet", "simulation_displacement_m"]


class OptionalDependencyError(ImportError):
    """A feature needs a package that is not installed; the message says how to install it."""


def require_pybullet():
    """The ``pybullet`` module, or :class:`OptionalDependencyError` with the install command."""
    try:
        import pybullet  # noqa: PLC0415
    except ImportError as exc:
        raise OptionalDependencyError(
            "the simulation displacement needs pybullet: pip install pybullet "
            "(or this project's extra: pip install -e '.[sim]')"
        ) from exc
    return pybullet


@contextlib.contextmanager
def _stdout_to_devnull():
    """Silence output written to file descriptor 1 by C code (keeps ``--json`` stdout clean)."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def simulation_displacement_m(
    hand: trimesh.Trimesh,
    obj: trimesh.Trimesh,
    *,
    gravity_m_s2: Sequence[float] = (0.0, 0.0, -9.8),
    steps: int = 35,
    timestep_s: float = 1.0 / 240.0,
    friction: float = 3.0,
    object_restitution: float = 0.5,
    hand_restitution: float = 0.0,
    object_mass_kg: float = 1.0,
    solver_iterations: int = 150,
    vhacd_resolution: int = 1000,
    vhacd_concavity: float = 0.001,
) -> float:
    """How far (metres) the object moves under gravity while held by the static hand.

    GraspTTA's protocol (from ObMan): pybullet DIRECT; the hand is a static concave
    triangle mesh (mass 0, restitution 0); the object is a convex decomposition
    (pybullet's built-in V-HACD) of mass 1 kg placed at its vertex mean, restitution
    0.5; lateral friction 3 for both; time step 1/240 s; 35 steps; 150 solver
    iterations.  The result is the distance between the object's start and end
    positions.  Free fall over 35 steps is ~0.107 m (pybullet's semi-implicit Euler:
    g dt^2 n(n+1)/2), so a value near 0.1 m means the hand does not hold the object;
    GraspTTA uses 0.03 m as its stability threshold.

    Args:
        hand, obj: meshes in metres, in the same frame.
        gravity_m_s2: gravity vector in that frame (default -z: GRAB's world frame is
            z-up; GraspTTA's camera-frame data use their own vertical axis).
        vhacd_resolution, vhacd_concavity: V-HACD voxel count and allowed concavity
            (GraspTTA / ObMan: 1000 and 0.001).

    Raises:
        OptionalDependencyError: pybullet is not installed (``pip install pybullet``).
    """
    p = require_pybullet()
    hand_v = np.asarray(hand.vertices, dtype=np.float64)
    hand_f = np.asarray(hand.faces, dtype=np.int64)
    obj_v = np.asarray(obj.vertices, dtype=np.float64)
    centre = obj_v.mean(axis=0)
    client = p.connect(p.DIRECT)
    try:
        p.setPhysicsEngineParameter(
            fixedTimeStep=timestep_s, numSolverIterations=solver_iterations, physicsClientId=client
        )
        p.setGravity(*[float(g) for g in gravity_m_s2], physicsClientId=client)

        hand_shape = p.createCollisionShape(
            p.GEOM_MESH,
            vertices=hand_v.tolist(),
            indices=hand_f.reshape(-1).tolist(),
            flags=p.GEOM_FORCE_CONCAVE_TRIMESH,
            physicsClientId=client,
        )
        hand_body = p.createMultiBody(baseMass=0, baseCollisionShapeIndex=hand_shape, physicsClientId=client)
        p.changeDynamics(
            hand_body, -1, lateralFriction=friction, restitution=hand_restitution, physicsClientId=client
        )

        with tempfile.TemporaryDirectory(prefix="halo_vhacd_") as tmp:
            src, dst, log = (os.path.join(tmp, n) for n in ("object.obj", "object_vhacd.obj", "vhacd.log"))
            trimesh.Trimesh(obj_v - centre, np.asarray(obj.faces), process=False).export(src)
            with _stdout_to_devnull():  # V-HACD prints its progress from C straight to fd 1
                p.vhacd(
                    src, dst, log, resolution=int(vhacd_resolution), concavity=vhacd_concavity,
                    physicsClientId=client,
                )  # fmt: skip
            if not Path(dst).is_file() or Path(dst).stat().st_size == 0:
                raise RuntimeError("V-HACD produced no convex decomposition of the object")
            obj_shape = p.createCollisionShape(p.GEOM_MESH, fileName=dst, physicsClientId=client)
        obj_body = p.createMultiBody(
            baseMass=object_mass_kg,
            baseCollisionShapeIndex=obj_shape,
            basePosition=centre.tolist(),
            physicsClientId=client,
        )
        p.changeDynamics(
            obj_body, -1, lateralFriction=friction, restitution=object_restitution, physicsClientId=client
        )
        start = np.array(p.getBasePositionAndOrientation(obj_body, physicsClientId=client)[0])
        for _ in range(int(steps)):
            p.stepSimulation(physicsClientId=client)
        end = np.array(p.getBasePositionAndOrientation(obj_body, physicsClientId=client)[0])
    finally:
        p.disconnect(physicsClientId=client)
    return float(np.linalg.norm(end - start))
