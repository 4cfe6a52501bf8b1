"""Hand surfaces from occupancy: multiresolution isosurface extraction (MISE + marching cubes),
the per-hand field with part culling, and ``extract_hand_mesh`` (keypoints -> mesh in metres)."""
