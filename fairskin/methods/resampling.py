"""Level 1, training-data resampling: each (group, disease) subclass weighted by 1 / N (class-balanced,
``cbrs``) or 1 / sqrt(N) (square-root, ``sqrs``), applied by the sampler (``fairskin.data.sampling``)."""

from fairskin.methods.spec import VariantSpec

VERSION = 1
METHODS = [
    VariantSpec(name="cbrs", weights="cbrs", loss="dm"),
    VariantSpec(name="sqrs", weights="sqrs", loss="dm"),
]
