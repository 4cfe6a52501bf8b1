"""HALO: skeleton-driven neural occupancy for articulated hands.

Plain torch + numpy; importable without Lightning or Hydra.  Public units are
metres and the public joint order is MANO's 21-joint order (see ``halo.core.skeleton``).
"""

__version__ = "0.1.0"
