"""Triangle-mesh geometry shared by data, evaluation and grasps: inside tests, mesh files with
unit guessing, sealing open meshes."""
