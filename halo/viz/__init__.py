"""Offscreen rendering of hand meshes, skeletons, objects and grids of them."""
