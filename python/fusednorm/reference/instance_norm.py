"""InstanceNorm is GroupNorm with one group per channel (see group_norm.py); eval mode with
running statistics is BatchNorm's eval path (see batch_norm.py).  Nothing else lives here."""
