"""Hand models: the MANO file reader and layer, the procedural MANO-format synthetic hand and
its pose sampler, built-in keypoint sequences."""
