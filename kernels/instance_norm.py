"""InstanceNorm reuses GroupNorm with G = C: the op layer calls group_norm_fwd/bwd with num_groups=C."""
