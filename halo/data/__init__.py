"""Hand occupancy data: the original on-disk layout, per-hand preparation, the parallel resumable
dataset build, the YouTube3D reader and keypoint files."""
