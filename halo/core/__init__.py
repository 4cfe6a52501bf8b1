"""The HALO method itself: skeleton conventions, the canonicalization layer, the 16-part
occupancy network, :class:`HaloModel` (keypoints -> occupancy) and checkpoint reading/writing.

Imports nothing from the other subpackages except :mod:`halo.utils`."""
