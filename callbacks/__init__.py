"""Lightning callbacks (thin glue; the method itself lives in halo/).

* :class:`~callbacks.mesh_validation.MeshValidation`: meshes, surface metrics and renders of
  fixed validation hands during training (``conf/callbacks/mesh_validation.yaml``).
"""

from callbacks.mesh_validation import MeshValidation

__all__ = ["MeshValidation"]
