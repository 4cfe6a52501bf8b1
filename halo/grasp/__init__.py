"""Grasps: GRAB data, grasp records, procedural objects and the grasp synthesizer, HALO-VAE,
the sample -> mesh -> score -> report pipeline, grasp metrics and diversity."""
