"""Occupancy network: batched == per-part, end-to-end API, gradients, checkpoints, the original's numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from halo.core.checkpoint import (
    CheckpointError,
    convert_original_checkpoint,
    load_model,
    load_original_checkpoint,
    save_checkpoint,
)
from halo.core.model import HaloModel, NetworkConfig
from tests.helpers import random_hands


@pytest.fixture(scope="module")
def random_model() -> HaloModel:
    torch.manual_seed(0)
    return HaloModel().eval()


def _points_near(kp: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 21, (kp.shape[0], n), generator=g)
    centres = torch.gather(kp, 1, idx[..., None].expand(-1, -1, 3))
    return centres + 0.02 * torch.randn(kp.shape[0], n, 3, generator=g, dtype=kp.dtype)


def test_batched_parts_equal_per_part_loop(random_model):
    kp = random_hands(3, seed=1, dtype=torch.float64)
    model = random_model.double()
    pose = model.canonicalize(kp)
    mats, lengths = model.model_inputs(pose)
    pts = model.points_to_model(pose, _points_near(kp, 700))
    batched = model.network(pts, mats, lengths, chunk_size=256)  # several chunks
    loop = model.network.per_part_logits(pts, mats, lengths)
    assert batched.shape == (3, 700, 16)
    torch.testing.assert_close(batched, loop, atol=1e-10, rtol=1e-10)
    random_model.float()


def test_occupancy_api_shapes_labels_and_smooth_max(random_model):
    kp = random_hands(2, seed=2, dtype=torch.float32)
    pts = _points_near(kp, 300)
    occ, labels = random_model.occupancy(pts, kp, return_parts=True)
    assert occ.shape == (2, 300) and labels.shape == (2, 300)
    assert occ.min() >= 0 and occ.max() <= 1 and labels.max() < 16
    out = random_model(pts, kp, return_parts=True)
    picked = torch.sigmoid(out.part_logits).gather(-1, labels[..., None]).squeeze(-1)
    torch.testing.assert_close(picked, occ)
    smooth = HaloModel(NetworkConfig(smooth_max=True))
    smooth.load_state_dict(random_model.state_dict())
    s = smooth.occupancy(pts, kp)
    assert torch.all(s <= occ + 1e-6)  # a convex combination never exceeds the max


def test_gradients_reach_keypoints_and_weights(random_model):
    kp = random_hands(2, seed=3, dtype=torch.float32).requires_grad_(True)
    pts = _points_near(kp.detach(), 200)
    occ = random_model.occupancy(pts, kp)
    occ.sum().backward()
    assert kp.grad is not None and torch.isfinite(kp.grad).all() and kp.grad.abs().sum() > 0
    assert all(p.grad is not None for p in random_model.parameters())
    random_model.zero_grad()


def test_points_batch_mismatch_is_a_clear_error(random_model):
    kp = random_hands(2, seed=4, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"points must have shape \(B,N,3\) with B = 2"):
        random_model.occupancy(torch.zeros(3, 10, 3), kp)


def test_model_space_round_trip():
    kp = random_hands(2, seed=5)
    pose = HaloModel.canonicalize(HaloModel(), kp)
    pts = _points_near(kp, 50)
    back = HaloModel.points_from_model(pose, HaloModel.points_to_model(pose, pts))
    torch.testing.assert_close(back, pts)


def test_own_checkpoint_round_trip(tmp_path, random_model):
    path = save_checkpoint(random_model, tmp_path / "m.pt", metadata={"note": "x"})
    model, meta = load_model(path, trust_pickle=False)  # own format loads with weights_only
    assert meta == {"note": "x"}
    for (k, a), (_, b) in zip(random_model.state_dict().items(), model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert not (tmp_path / "m.pt.tmp").exists()


def test_bad_checkpoints_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_model(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk.pt: cannot be read"):
        load_model(junk)
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="unrecognised checkpoint layout"):
        load_model(tmp_path / "other.pt")
    torch.save({"model": {"decoder.foo": torch.zeros(1)}}, tmp_path / "orig.pt")
    with pytest.raises(CheckpointError, match="unexpected key 'decoder.foo'"):
        load_model(tmp_path / "orig.pt")


# ----------------------------------------------------------------------------- the original's numbers


@pytest.mark.reference
def test_original_network_reproduces_reference_occupancy(halo_reference):
    ref = np.load(halo_reference / "dev_reference.npz")
    model, meta = load_original_checkpoint(halo_reference / "model_best.pt")
    assert meta["iteration"] == 1029000 and abs(meta["best_val_iou"] - 0.93579) < 1e-4
    assert sum(p.numel() for p in model.parameters()) == 238_024
    with torch.no_grad():
        logits = model.network(
            torch.from_numpy(ref["query_points"]),
            torch.from_numpy(ref["matrices"]),
            torch.from_numpy(ref["bone_lengths"]),
        )
        occ = model.network.combine(logits)
        loop = model.network.combine(
            model.network.per_part_logits(
                torch.from_numpy(ref["query_points"]),
                torch.from_numpy(ref["matrices"]),
                torch.from_numpy(ref["bone_lengths"]),
            )
        )
    ref_occ = torch.from_numpy(ref["occupancy"])
    assert (occ - ref_occ).abs().max() <= 1e-4
    assert (loop - ref_occ).abs().max() <= 1e-4
    # part labels agree wherever the winning part is clear
    top2 = torch.sigmoid(logits).topk(2, dim=-1).values
    clear = (ref_occ > 0.01) & (top2[..., 0] - top2[..., 1] > 1e-3)
    labels = logits.argmax(-1)
    assert (labels[clear] == torch.from_numpy(ref["part_label"]).long()[clear]).all()


@pytest.mark.reference
def test_end_to_end_from_keypoints_matches_reference(halo_reference, tmp_path):
    ref = np.load(halo_reference / "dev_reference.npz")
    # also exercise the one-off converter: original -> own format -> load
    own = convert_original_checkpoint(halo_reference / "model_best.pt", tmp_path / "halo_base.pt")
    model, meta = load_model(own, trust_pickle=False)
    assert meta["source_format"] == "original-halo"
    kp = torch.from_numpy(ref["keypoints"])
    pose = model.canonicalize(kp.double())
    pts_m = HaloModel.points_from_model(pose, torch.from_numpy(ref["query_points"]).double()).float()
    with torch.no_grad():
        occ = model.occupancy(pts_m, kp)
    diff = (occ - torch.from_numpy(ref["occupancy"])).abs()
    # The released network amplifies its inputs' float32 rounding: perturbing the
    # reference matrices by 1e-6 moves occupancy by up to ~1e-3.  Our transforms
    # differ from the float32 original by ~1e-6 (see test_canonicalization), so
    # end to end we require: tiny on average, < 5e-4 everywhere, identical labels
    # at the 0.5 threshold.
    assert diff.mean() < 1e-5 and diff.max() < 5e-4
    inside = occ > 0.5
    ref_inside = torch.from_numpy(ref["occupancy"]) > 0.5
    assert (inside == ref_inside).float().mean() >= 0.9995


def test_float64_inputs_work_with_a_float32_model(random_model):
    # numpy arrays are float64 by default: the README example passes them straight in
    kp = random_hands(2, seed=6, dtype=torch.float64)
    pts = _points_near(kp, 100)
    occ64 = random_model.occupancy(pts, kp)
    occ32 = random_model.occupancy(pts.float(), kp.float())
    assert occ64.dtype == torch.float32
    torch.testing.assert_close(occ64, occ32, atol=1e-5, rtol=0)


def test_part_culling_evaluates_active_pairs_exactly_and_matches_the_mesh_field():
    """NetworkConfig.part_radii: culled pairs get culled_logit; active pairs equal the dense network;
    the meshing field applies the same rule, so what is trained is what is meshed."""
    from halo.core.model import DEFAULT_PART_RADII
    from halo.meshing.hand_field import HandOccupancyField
    from tests.helpers import random_hands

    torch.manual_seed(0)
    culled = HaloModel(NetworkConfig(part_radii="default"))
    dense = HaloModel(NetworkConfig())
    dense.load_state_dict(culled.state_dict())
    kp = random_hands(2, seed=4, dtype=torch.float32)
    pts = kp.mean(1, keepdim=True) + 0.04 * torch.randn(2, 3000, 3)
    a = culled(pts, kp, return_parts=True).part_logits
    b = dense(pts, kp, return_parts=True).part_logits
    active = a != culled.config.culled_logit
    assert 0.02 < active.float().mean() < 0.5  # culling removes most (point, part) pairs
    torch.testing.assert_close(a[active], b[active], atol=1e-5, rtol=1e-5)
    # Every point within the palm's radius of its bone keeps the palm part.
    pose = culled.canonicalize(kp)
    mats, _ = HaloModel.model_inputs(pose)
    seg = HaloModel.part_segments(pose, mats)
    x = (HaloModel.points_to_model(pose, pts) @ mats[:, 0, :3, :3].transpose(-1, -2)) + mats[
        :, 0, None, :3, 3
    ]
    ab = seg[:, 0, 1] - seg[:, 0, 0]
    t = (((x - seg[:, 0, None, 0]) * ab[:, None]).sum(-1) / (ab * ab).sum(-1)[:, None]).clamp(0, 1)
    dist = (x - seg[:, 0, None, 0] - t[..., None] * ab[:, None]).norm(dim=-1)
    assert torch.equal(active[..., 0], dist <= DEFAULT_PART_RADII[0])
    # The meshing field (always culling for such a model) agrees with the model's occupancy.
    field = HandOccupancyField(culled, kp[0], cull=False)
    assert field.cull == "radius"
    occ_field = torch.as_tensor(field(HaloModel.points_to_model(pose, pts)[0].detach().numpy()))
    occ_model = culled.occupancy(pts, kp)[0].detach()
    torch.testing.assert_close(occ_field, occ_model, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="part_radii must be 16 positive"):
        NetworkConfig(part_radii=(0.1, 0.2))


def test_part_culling_gradients_equal_the_dense_networks_on_the_active_pairs():
    """The culled pass gathers all active pairs at once and splits them by part: the gradient of any
    loss on the active logits, w.r.t. every weight and the keypoints, is the dense network's."""
    from tests.helpers import random_hands

    torch.manual_seed(1)
    culled = HaloModel(NetworkConfig(part_radii="default")).double()
    dense = HaloModel(NetworkConfig()).double()
    dense.load_state_dict(culled.state_dict())
    kp = random_hands(2, seed=5, dtype=torch.float64)
    pts = kp.mean(1, keepdim=True) + 0.04 * torch.randn(2, 2000, 3, dtype=torch.float64)
    weight = torch.rand(2, 2000, 16, dtype=torch.float64)
    with torch.no_grad():
        active = culled(pts, kp, return_parts=True).part_logits != culled.config.culled_logit
    grads = []
    for model in (culled, dense):
        keypoints = kp.clone().requires_grad_(True)
        logits = model(pts, keypoints, return_parts=True, exact_gradient=True).part_logits
        (weight * logits)[active].sum().backward()
        grads.append([keypoints.grad, *(p.grad for p in model.parameters())])
    assert 0.02 < active.double().mean() < 0.5
    for g_culled, g_dense in zip(*grads, strict=True):
        torch.testing.assert_close(g_culled, g_dense, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("part_radii", [None, "default"])
def test_bf16_autocast_keeps_geometry_in_full_precision(part_radii):
    # trainer.precision=bf16-mixed: the part MLPs run in bf16, the canonicalization and the culling
    # decisions stay float32, so the field matches float32 closely and keypoint gradients flow.
    from halo.core.model import HaloModel, NetworkConfig
    from halo.hands.sequences import random_skeletons

    torch.manual_seed(0)
    model = HaloModel(NetworkConfig(part_radii=part_radii))
    kp = torch.tensor(random_skeletons(2, seed=1), dtype=torch.float32)
    pts = kp[:, :1] + 0.05 * torch.randn(2, 400, 3)
    ref = model.occupancy(pts, kp)
    kp_grad = kp.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        occ = model.occupancy(pts, kp_grad)
    assert (occ.float() - ref).abs().max() < 0.01
    occ.float().sum().backward()
    assert torch.isfinite(kp_grad.grad).all() and kp_grad.grad.abs().sum() > 0


# ---------------------------------------------------------------------------- inference path


def test_inference_path_equals_the_differentiable_forward_for_any_chunking(random_model):
    kp = random_hands(3, seed=11, dtype=torch.float32)
    pts = _points_near(kp, 900, seed=3)
    ref = random_model(pts, kp, return_parts=True)  # autograd on: the batched forward
    for chunk in (7, 256, 4096):
        with torch.no_grad():
            occ, labels = random_model.occupancy(pts, kp, return_parts=True, chunk_size=chunk)
        torch.testing.assert_close(occ, ref.occupancy.detach(), atol=2e-6, rtol=0)
        assert torch.equal(labels, ref.part_labels)
    # float64 end to end agrees to rounding
    model64 = HaloModel().double()
    model64.load_state_dict(random_model.state_dict())
    with torch.no_grad():
        occ64 = model64.occupancy(pts.double(), kp.double(), chunk_size=100)
    torch.testing.assert_close(
        occ64, model64(pts.double(), kp.double()).occupancy.detach(), atol=1e-12, rtol=0
    )


def test_culled_inference_keeps_every_label_where_the_hand_is_occupied(random_model):
    # cull="radius": the mesh path's calibrated part radii, per hand; the culled pairs count as
    # culled_logit, so values below prob_floor may differ, labels and values above may not.
    kp = random_hands(2, seed=12, dtype=torch.float32)
    pts = _points_near(kp, 3000, seed=4)
    with torch.no_grad():
        full, full_labels = random_model.occupancy(pts, kp, return_parts=True)
        culled, culled_labels = random_model.occupancy(pts, kp, return_parts=True, cull="radius")
        grad_free_forward = random_model(pts, kp, cull="radius").occupancy
    occupied = full >= 1e-3
    assert occupied.float().mean() > 0.05
    assert torch.equal(culled_labels[occupied], full_labels[occupied])
    torch.testing.assert_close(culled[occupied], full[occupied], atol=2e-6, rtol=0)
    torch.testing.assert_close(grad_free_forward, culled, atol=2e-6, rtol=0)  # forward culls the same way
    # (that it skips work is measured on the original checkpoint: tests/meshing, parts per point)
    with pytest.raises(ValueError, match="cull must be"):
        random_model.occupancy(pts, kp, cull="ibp")


def test_radii_calibrated_once_give_the_same_values_and_gradients_as_calibrating_per_call(random_model):
    # culling_radii: what grasp refinement calibrates once and passes as cull= at every step.
    kp = random_hands(3, seed=13, dtype=torch.float32)
    pts = _points_near(kp, 2000, seed=5)
    radii = random_model.culling_radii(kp)
    assert radii.shape == (3, random_model.config.num_parts) and (radii > 0).all()
    moved = kp.clone().requires_grad_(True)
    per_call = random_model(pts, moved, return_parts=True, cull="radius").part_logits.amax(-1)
    once = random_model(pts, moved, return_parts=True, cull=radii).part_logits.amax(-1)
    torch.testing.assert_close(once, per_call, atol=1e-6, rtol=0)
    (g_once,) = torch.autograd.grad(once.clamp_min(-5).sum(), moved)
    full = random_model(pts, moved, return_parts=True).part_logits.amax(-1)
    (g_full,) = torch.autograd.grad(full.clamp_min(-5).sum(), moved)
    # culled pairs sit below -5 anyway; float32 sums in another order differ by ~1e-4
    torch.testing.assert_close(g_once, g_full, atol=1e-3, rtol=2e-3)
    with pytest.raises(ValueError, match=r"\(B, 16\)"):
        random_model(pts, kp, cull=radii[:2])


def test_packed_hands_equal_hands_one_by_one(random_model):
    kp = random_hands(3, seed=13, dtype=torch.float32)
    net = random_model.network
    with torch.no_grad():
        pose = random_model.canonicalize(kp)
        mats, lengths = random_model.model_inputs(pose)
        posed = net.pose_parts(mats, lengths, random_model.part_segments(pose, mats))
        counts = [50, 0, 130]
        pts = [torch.rand(c, 3) * 0.4 - 0.2 for c in counts]
        best, labels, evaluations = net.max_logits_packed(torch.cat(pts), counts, posed, chunk_size=64)
        for b, (p, start) in enumerate(zip(pts, [0, 50, 50], strict=True)):
            one, one_labels, _ = net.max_logits(p[None], posed.hand(b))
            torch.testing.assert_close(best[start : start + len(p)], one[0], atol=1e-6, rtol=0)
            assert torch.equal(labels[start : start + len(p)], one_labels[0])
        assert evaluations == [50 * 16, 0, 130 * 16]
        with pytest.raises(ValueError, match=r"counts \[50, 130\] must give one count per posed hand \(3\)"):
            net.max_logits_packed(torch.cat(pts), [50, 130], posed)


def test_inference_runs_under_autocast_and_keeps_gradients_elsewhere(random_model):
    kp = random_hands(1, seed=14, dtype=torch.float32)
    pts = _points_near(kp, 200, seed=5)
    with torch.no_grad():
        ref = random_model.occupancy(pts, kp)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            occ = random_model.occupancy(pts, kp)  # the inference path runs in float32 regardless
    torch.testing.assert_close(occ, ref)
    kp_grad = kp.clone().requires_grad_(True)
    random_model.occupancy(pts, kp_grad).sum().backward()  # grad on: still differentiable
    assert kp_grad.grad is not None and kp_grad.grad.abs().sum() > 0
    random_model.zero_grad()


@pytest.mark.parametrize("variant", ["dense", "dense, few points", "trained radii", "calibrated radii"])
def test_max_logit_has_the_values_and_gradients_of_the_max_over_all_parts(variant):
    """HaloModel.max_logit finds each point's winning part without autograd and differentiates that
    part alone: values, labels and gradients w.r.t. keypoints, points and every weight are those of
    forward(...).part_logits.max(-1), for the dense network and both kinds of culling."""
    torch.manual_seed(2)
    config = NetworkConfig(part_radii="default") if variant == "trained radii" else NetworkConfig()
    model = HaloModel(config).double()
    with torch.no_grad():  # an untrained network: let position, not one part's bias, pick the winner
        model.network.weights[-1].mul_(50.0)
    cull = "radius" if variant == "calibrated radii" else None
    kp = random_hands(3, seed=6, dtype=torch.float64)
    n = 100 if variant == "dense, few points" else 900  # below / above SMALL_POINT_SETS
    pts = _points_near(kp, n, seed=2)
    weight = torch.rand(3, n, dtype=torch.float64)
    results = []
    for fast in (False, True):
        keypoints, points = kp.clone().requires_grad_(True), pts.clone().requires_grad_(True)
        model.zero_grad()
        if fast:
            logit, labels = model.max_logit(points, keypoints, cull=cull, exact_gradient=True)
        else:
            out = model(points, keypoints, return_parts=True, cull=cull, exact_gradient=True)
            logit, labels = out.part_logits.max(dim=-1)
        (weight * logit).sum().backward()
        results.append([logit.detach(), keypoints.grad, points.grad, *(p.grad for p in model.parameters())])
        if not fast:
            reference_labels = labels
    assert torch.equal(labels, reference_labels)
    assert 1 < len(labels.unique()) <= 16
    for fast, full in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(fast, full, atol=1e-10, rtol=1e-9)
    with torch.no_grad():  # inference: the first pass alone, the same values
        torch.testing.assert_close(model.max_logit(pts, kp, cull=cull)[0], results[0][0], atol=1e-10, rtol=0)
    smooth = HaloModel(NetworkConfig(smooth_max=True))
    with pytest.raises(ValueError, match="smooth-max"):
        smooth.max_logit(pts.float(), kp.float())


@pytest.mark.parametrize("part_radii", [None, "default"])
def test_soft_union_is_one_function_on_every_path(part_radii):
    """NetworkConfig.union_temperature t: the hand logit is t*logsumexp(part_logits/t) (a culled pair
    counting as culled_logit) in forward, max_logit (values and gradients), the chunked inference
    path (any chunking, few or many points) and the meshing field; labels stay the largest part."""
    from halo.meshing.hand_field import HandOccupancyField

    torch.manual_seed(3)
    model = HaloModel(NetworkConfig(union_temperature=1.0, part_radii=part_radii)).double()
    with torch.no_grad():
        model.network.weights[-1].mul_(20.0)
    kp = random_hands(2, seed=8, dtype=torch.float64)
    for n in (100, 900):  # below / above SMALL_POINT_SETS
        pts = _points_near(kp, n, seed=3)
        keypoints, points = kp.clone().requires_grad_(True), pts.clone().requires_grad_(True)
        out = model(points, keypoints, return_parts=True)
        t = model.config.union_temperature
        reference = t * torch.logsumexp(out.part_logits / t, dim=-1)
        torch.testing.assert_close(out.occupancy, torch.sigmoid(reference))
        hard = out.part_logits.max(dim=-1).values
        assert torch.all(reference >= hard) and torch.all(reference <= hard + t * np.log(16) + 1e-9)
        grads = torch.autograd.grad(reference.sum(), (keypoints, points))
        keypoints2, points2 = kp.clone().requires_grad_(True), pts.clone().requires_grad_(True)
        logit, labels = model.max_logit(points2, keypoints2)
        torch.testing.assert_close(logit, reference)
        assert torch.equal(labels, out.part_logits.argmax(dim=-1))
        for a, b in zip(torch.autograd.grad(logit.sum(), (keypoints2, points2)), grads, strict=True):
            torch.testing.assert_close(a, b)
        with torch.no_grad():
            for chunk in (64, 100_000):
                occ = model.occupancy(pts, kp, chunk_size=chunk)
                torch.testing.assert_close(occ, torch.sigmoid(reference.detach()), atol=1e-12, rtol=1e-9)
    field = HandOccupancyField(model, kp[0], interpolate="logit")
    pose = model.canonicalize(kp)
    values = torch.as_tensor(field(HaloModel.points_to_model(pose, pts)[0].numpy()))
    torch.testing.assert_close(values.double(), reference[0].detach(), atol=1e-5, rtol=0)


def test_soft_union_fills_the_crease_where_two_parts_meet():
    """Where two parts are both at logit 0 (the max: on the surface), the soft union is t*log 2 inside;
    far inside one part it is that part's logit; it is validated and survives a checkpoint."""
    net = HaloModel(NetworkConfig(union_temperature=1.0)).network
    culled = torch.full((16,), -12.0)
    two = culled.clone()
    two[[1, 2]] = 0.0
    assert float(net.union_logit(two)) == pytest.approx(np.log(2.0), abs=1e-3)
    one = culled.clone()
    one[5] = 9.0
    assert float(net.union_logit(one)) == pytest.approx(9.0, abs=1e-3)
    assert net.all_culled_logit() == pytest.approx(-12.0 + np.log(16.0), abs=1e-5)
    assert HaloModel().network.all_culled_logit() == -12.0
    with pytest.raises(ValueError, match="union_temperature must be >= 0"):
        NetworkConfig(union_temperature=-1.0)
    with pytest.raises(ValueError, match="smooth_max"):
        NetworkConfig(union_temperature=1.0, smooth_max=True)
    restored = NetworkConfig.from_dict(NetworkConfig(union_temperature=2.0, part_radii="default").to_dict())
    assert restored.union_temperature == 2.0 and not restored.mixes_parts
    assert NetworkConfig(union_temperature=2.0).mixes_parts  # no trained radii: nothing may be culled
