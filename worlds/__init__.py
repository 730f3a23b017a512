"""Synthetic worlds: data generators with verifiable answers (imported as posttrain.worlds)."""
