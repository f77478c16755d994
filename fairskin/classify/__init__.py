"""Level 3: the downstream classifier, augmentation plans and dynamic rebalancing."""
